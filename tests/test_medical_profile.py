"""The medical profile's sections (issue 13, docs/medical-record.md) for every kind of caller, on both stores.

Each section (allergies, diseases, disabilities, family history, hospitalisations, treatments, vaccinations, a
measure, a measure target, entourage, advance directives, blood group) is created, read, searched and updated by
the patient; by a legal representative who manages the record (a read-only delegate only reads); by an app with
the section's ``patient/`` scope (one without it is refused); read by a professional the patient authorised,
in normal mode and in both emergency modes (the emergency sections only, and no write); and never reached by
another patient, an unauthorised or a blocked professional, whatever the probe (read, search, ``_summary=count``,
``_revinclude``, ``Patient/$everything``).

One server per store for the whole module (the Mongo stand-in is slow to start a database): every test leaves
its own entries behind, so assertions name entries and never count what another test may have added, except
where the expected count is 0 whatever was added.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from conftest import BACKENDS, module_store_url, seeded_client
from test_access_control import StandInVerifier, token
from test_policy import consent, directory, ps_token

from fhir_server.policy import codes
from fhir_server.policy.rules import EMERGENCY_TYPES
from fhir_server.space import representatives as rep

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

LONG = {"exp": int(time.time()) + 24 * 3600}  # minted at import: valid however long the suite runs
SYSTEM = token("system/*.cruds", client_id="feed", sub="feed", **LONG)
LEA = token("patient/*.cruds", client_id="mes-app", sub="lea-sub", fhirUser="Patient/lea", patient="lea", **LONG)
MAX = token("patient/*.cruds", client_id="mes-app", sub="max-sub", fhirUser="Patient/max", patient="max", **LONG)
# Léa's representatives, as the authorization server signs their tokens (fhirUser their RelatedPerson, the patient
# they reach through it in ``managed_patients`` and ``represented``, re-checked against the store on each request).
TUTOR = token("user/*.cruds", client_id="mes", sub="paul", fhirUser="RelatedPerson/lea-tutor",
              managed_patients=["lea"], represented=["lea"], **LONG)  # fmt: skip
AIDANT = token("user/*.cruds", client_id="mes", sub="alice", fhirUser="RelatedPerson/lea-aidant",
               managed_patients=["lea"], represented=["lea"], **LONG)  # fmt: skip
# Professionals: med authorised by Léa, stranger not, blocked refused by her.
MED = ps_token("med", **LONG)
MED_BTG = ps_token("med", codes.BRIS_DE_GLACE, justification="patient inconscient", **LONG)
MED_15 = ps_token("med", codes.CENTRE_15, **LONG)
STRANGER = ps_token("stranger", **LONG)
BLOCKED = ps_token("blocked", **LONG)


def app_token(*types: str, scope: str = "cruds") -> dict[str, str]:
    """A third-party app of Léa's: ``patient/`` scopes with her as launch patient, no fhirUser."""
    return token(" ".join(f"patient/{t}.{scope}" for t in types), client_id="third-app", sub="lea-sub",
                 patient="lea", **LONG)  # fmt: skip


# --- the sections ----------------------------------------------------------------------------------------------
def _ref(patient: str) -> dict:
    return {"reference": f"Patient/{patient}"}


def allergy(p: str, text: str) -> dict:
    status = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
    return {"resourceType": "AllergyIntolerance", "patient": _ref(p), "code": {"text": text},
            "clinicalStatus": {"coding": [{"system": status, "code": "active"}]}}  # fmt: skip


def _condition(p: str, text: str, category: dict) -> dict:
    status = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    return {"resourceType": "Condition", "subject": _ref(p), "code": {"text": text},
            "category": [{"coding": [category]}],
            "clinicalStatus": {"coding": [{"system": status, "code": "active"}]}}  # fmt: skip


def disease(p: str, text: str) -> dict:
    category = "http://terminology.hl7.org/CodeSystem/condition-category"
    evidence = [{"detail": [{"reference": f"Observation/{p}-blood-group"}]}]  # a link out of an emergency section
    return {**_condition(p, text, {"system": category, "code": "problem-list-item"}), "evidence": evidence}


def disability(p: str, text: str) -> dict:
    return _condition(p, text, {"system": SNOMED, "code": "21134002", "display": "Disability"})


def family(p: str, text: str) -> dict:
    return {"resourceType": "FamilyMemberHistory", "status": "completed", "patient": _ref(p),
            "relationship": {"coding": [{"system": V3_ROLE, "code": "FTH"}]},
            "condition": [{"code": {"text": text}}]}  # fmt: skip


def hospitalisation(p: str, text: str) -> dict:
    return {"resourceType": "Encounter", "status": "finished", "subject": _ref(p),
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "reasonCode": [{"text": text}], "period": {"start": "2024-03-01", "end": "2024-03-05"}}  # fmt: skip


def treatment(p: str, text: str) -> dict:
    return {"resourceType": "MedicationStatement", "status": "active", "subject": _ref(p),
            "medicationCodeableConcept": {"text": text}}  # fmt: skip


def vaccination(p: str, text: str) -> dict:
    return {"resourceType": "Immunization", "status": "completed", "patient": _ref(p),
            "vaccineCode": {"text": text}, "occurrenceDateTime": "2020-01-01"}  # fmt: skip


def weight(p: str, text: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "subject": _ref(p),
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "29463-7"}], "text": text},
            "effectiveDateTime": "2024-05-01", "encounter": {"reference": f"Encounter/{p}-hospitalisations"},
            "valueQuantity": {"value": 62.5, "unit": "kg", "system": UCUM, "code": "kg"}}  # fmt: skip


def target(p: str, text: str) -> dict:
    return {"resourceType": "Goal", "lifecycleStatus": "active", "subject": _ref(p), "description": {"text": text},
            "target": [{"measure": {"coding": [{"system": LOINC, "code": "29463-7"}]},
                        "detailQuantity": {"value": 60, "unit": "kg", "system": UCUM, "code": "kg"}}]}  # fmt: skip


def entourage(p: str, text: str) -> dict:
    return {"resourceType": "RelatedPerson", "active": True, "patient": _ref(p), "name": [{"text": text}],
            "relationship": [{"coding": [{"system": V3_ROLE, "code": "SIS"}]}],
            "telecom": [{"system": "phone", "value": "+33600000000"}]}  # fmt: skip


def directive(p: str, text: str) -> dict:
    return {"resourceType": "Consent", "status": "active", "patient": _ref(p),
            "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": codes.ADVANCE_DIRECTIVE}]},
            "category": [{"coding": [{"system": LOINC, "code": "75320-2"}], "text": text}],
            "sourceReference": {"reference": f"DocumentReference/{p}-adr-doc"}}  # fmt: skip


def blood_group(p: str, text: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "subject": _ref(p),
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": "882-1"}], "text": text},
            "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "278149003"}]}}  # fmt: skip


SECTIONS: dict[str, Callable[[str, str], dict]] = {
    "allergies": allergy,
    "diseases": disease,
    "disabilities": disability,
    "family-history": family,
    "hospitalisations": hospitalisation,
    "treatments": treatment,
    "vaccinations": vaccination,
    "measures": weight,
    "measure-targets": target,
    "entourage": entourage,
    "advance-directives": directive,
    "blood-group": blood_group,
}
EMERGENCY = [s for s, make in SECTIONS.items() if make("x", "")["resourceType"] in EMERGENCY_TYPES]
NOT_EMERGENCY = [s for s in SECTIONS if s not in EMERGENCY]
assert set(EMERGENCY) == {"diseases", "disabilities", "hospitalisations", "vaccinations", "entourage",
                          "advance-directives"}  # fmt: skip


def type_of(section: str) -> str:
    return SECTIONS[section]("x", "")["resourceType"]


def seeded(patient: str, section: str) -> dict:
    """The entry of ``section`` the fixture stores for ``patient`` (id ``<patient>-<section>``)."""
    return {**SECTIONS[section](patient, f"{section} de {patient}"), "id": f"{patient}-{section}"}


def adr_document(patient: str) -> dict:
    attachment = {"contentType": "application/pdf", "url": f"Binary/{patient}-adr-bin"}
    return {"resourceType": "DocumentReference", "id": f"{patient}-adr-doc", "status": "current",
            "type": {"coding": [{"system": LOINC, "code": "42348-3"}]}, "subject": _ref(patient),
            "content": [{"attachment": attachment}]}  # fmt: skip


def representation(id_: str, username: str, kind: str, rights: str) -> dict:
    body = rep.related_person("lea", kind, rights, state=rep.ACCEPTED, active=True, start="2020-01-01",
                              identifiers=[{"system": rep.ACCOUNT, "value": username}])  # fmt: skip
    return {**body, "id": id_}


SEED = [
    *directory(),
    {"resourceType": "Patient", "id": "lea", "identifier": [{"system": codes.INS_NIR, "value": "283051234567881"}]},
    {"resourceType": "Patient", "id": "max", "identifier": [{"system": codes.INS_NIR, "value": "190012345678912"}]},
    consent("permit-med", "lea", "permit", ("PractitionerRole/r-med",)),
    consent("permit-blocked", "lea", "permit", ("PractitionerRole/r-blocked",)),
    consent("deny-blocked", "lea", "deny", ("Practitioner/blocked",)),
    representation("lea-tutor", "paul", rep.TUTOR, rep.MANAGE),
    representation("lea-aidant", "alice", rep.DELEGATE, rep.READ),
    adr_document("lea"),
    adr_document("max"),
    *(seeded(p, s) for p in ("lea", "max") for s in SECTIONS),
]


# --- one server per store ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=BACKENDS)
async def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator:
    """One seeded server per store for the module, behind the stand-in token verifier."""
    with module_store_url(request, tmp_path_factory) as url:
        async with seeded_client(url, SEED, StandInVerifier()) as c:
            yield c


# --- helpers ----------------------------------------------------------------------------------------------------
def _who(headers: dict) -> str:
    return next((k for k, v in globals().items() if v is headers and k.isupper()), "a token")


async def create(c: httpx.AsyncClient, section: str, headers: dict, status: int = 201, patient: str = "lea") -> dict:
    body = SECTIONS[section](patient, f"{section} {uuid.uuid4().hex[:8]}")
    r = await c.post(f"/{body['resourceType']}", json=body, headers=headers)
    assert r.status_code == status, f"{section}: create by {_who(headers)} answered {r.status_code}: {r.text}"
    return r.json()


async def read(c: httpx.AsyncClient, type_: str, id_: str, headers: dict, status: int = 200) -> dict:
    r = await c.get(f"/{type_}/{id_}", headers=headers)
    assert r.status_code == status, f"read {type_}/{id_} by {_who(headers)} answered {r.status_code}: {r.text}"
    return r.json()


async def search(c: httpx.AsyncClient, query: str, headers: dict, status: int = 200) -> dict:
    r = await c.get(f"/{query}", headers=headers)
    assert r.status_code == status, f"GET {query} by {_who(headers)} answered {r.status_code}: {r.text}"
    return r.json()


def matches(bundle: dict) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", ())
        if e.get("search", {}).get("mode", "match") == "match"
    }


def everything(bundle: dict) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", ())}


async def found(c: httpx.AsyncClient, section: str, headers: dict, patient: str = "lea") -> set[str]:
    return matches(await search(c, f"{type_of(section)}?patient=Patient/{patient}", headers))


async def count(c: httpx.AsyncClient, section: str, headers: dict, patient: str = "lea") -> int:
    bundle = await search(c, f"{type_of(section)}?patient=Patient/{patient}&_summary=count", headers)
    assert "entry" not in bundle, bundle
    return bundle["total"]


def forbidden(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    assert r.json()["resourceType"] == "OperationOutcome", r.text


sections = pytest.mark.parametrize("section", list(SECTIONS))


# --- 1. the patient ---------------------------------------------------------------------------------------------
@sections
async def test_the_patient_creates_reads_searches_and_updates_each_section(client, section):
    type_ = type_of(section)
    made = await create(client, section, LEA)
    ref = f"{type_}/{made['id']}"
    assert (await read(client, type_, made["id"], LEA))["id"] == made["id"]
    assert {ref, f"{type_}/lea-{section}"} <= await found(client, section, LEA)
    assert f"{type_}/max-{section}" not in await found(client, section, LEA)
    changed = {
        **made,
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">mis à jour</div>'},
    }
    r = await client.put(f"/{ref}", json=changed, headers=LEA)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] != made["meta"]["versionId"]
    assert "mis à jour" in (await read(client, type_, made["id"], LEA))["text"]["div"]


async def test_the_patient_reads_the_signed_advance_directive_the_consent_points_to(client):
    consent_ = await read(client, "Consent", "lea-advance-directives", LEA)
    doc = consent_["sourceReference"]["reference"]
    assert (await read(client, *doc.split("/"), LEA))["subject"]["reference"] == "Patient/lea"
    await read(client, "DocumentReference", "lea-adr-doc", MAX, status=404)


# --- 2. representatives -----------------------------------------------------------------------------------------
@sections
async def test_a_managing_representative_writes_a_read_only_delegate_only_reads(client, section):
    type_ = type_of(section)
    made = await create(client, section, TUTOR)
    assert (await read(client, type_, made["id"], TUTOR))["id"] == made["id"]
    assert {f"{type_}/{made['id']}", f"{type_}/lea-{section}"} <= await found(client, section, TUTOR)
    await read(client, type_, made["id"], LEA)  # it is the patient's record

    assert (await read(client, type_, made["id"], AIDANT))["id"] == made["id"]
    assert f"{type_}/lea-{section}" in await found(client, section, AIDANT)
    await create(client, section, AIDANT, status=403)
    r = await client.put(f"/{type_}/{made['id']}", json=made, headers=AIDANT)
    forbidden(r)
    forbidden(await client.delete(f"/{type_}/{made['id']}", headers=AIDANT))
    # neither reaches another patient's record
    await read(client, type_, f"max-{section}", TUTOR, status=404)
    await read(client, type_, f"max-{section}", AIDANT, status=404)
    assert await count(client, section, TUTOR, "max") == 0
    await create(client, section, TUTOR, status=403, patient="max")


# --- 3. apps ----------------------------------------------------------------------------------------------------
@sections
async def test_an_app_with_the_sections_scope_writes_and_reads_it_one_without_is_refused(client, section):
    type_ = type_of(section)
    app = app_token(type_)
    made = await create(client, section, app)
    assert (await read(client, type_, made["id"], app))["id"] == made["id"]
    assert {f"{type_}/{made['id']}", f"{type_}/lea-{section}"} <= await found(client, section, app)
    await read(client, type_, f"max-{section}", app, status=404)  # its launch patient only
    await create(client, section, app, status=403, patient="max")
    reader = app_token(type_, scope="rs")
    assert f"{type_}/lea-{section}" in await found(client, section, reader)
    await create(client, section, reader, status=403)

    other = app_token("Goal" if type_ != "Goal" else "Immunization")  # every right, on another type
    await create(client, section, other, status=403)
    forbidden(await client.get(f"/{type_}?patient=Patient/lea", headers=other))
    forbidden(await client.get(f"/{type_}/lea-{section}", headers=other))
    # the type reached through another type's search is left out, not disclosed
    bundle = await search(client, f"Patient?_id=lea&_revinclude={type_}:patient", app_token("Patient", scope="rs"))
    assert everything(bundle) == {"Patient/lea"}, bundle


async def test_an_app_scoped_to_observations_gets_no_allergy(client):
    obs_only = app_token("Observation", scope="rs")
    await create(client, "allergies", obs_only, status=403)
    forbidden(await client.get("/AllergyIntolerance?patient=Patient/lea", headers=obs_only))
    assert "Observation/lea-measures" in await found(client, "measures", obs_only)
    bundle = await search(client, "Observation?patient=Patient/lea&_revinclude=AllergyIntolerance:patient", obs_only)
    assert not any(r.startswith("AllergyIntolerance/") for r in everything(bundle)), bundle


# --- 4. an authorised professional, normal mode -----------------------------------------------------------------
@sections
async def test_an_authorised_professional_reads_searches_and_records(client, section):
    type_ = type_of(section)
    assert (await read(client, type_, f"lea-{section}", MED))["id"] == f"lea-{section}"
    assert f"{type_}/lea-{section}" in await found(client, section, MED)
    assert await count(client, section, MED) >= 1
    made = await create(client, section, MED)  # a professional feeds the record of a patient who did not block them
    assert (await read(client, type_, made["id"], LEA))["id"] == made["id"]  # the patient sees it
    assert (await read(client, type_, made["id"], MED))["id"] == made["id"]
    # not authorised by Max: his record is out of reach
    await read(client, type_, f"max-{section}", MED, status=404)
    assert await count(client, section, MED, "max") == 0


# --- 5. emergency modes -----------------------------------------------------------------------------------------
modes = pytest.mark.parametrize("ps", [MED_BTG, MED_15], ids=["bris_de_glace", "centre_15"])


@modes
@pytest.mark.parametrize("section", EMERGENCY)
async def test_an_emergency_access_reads_the_emergency_sections(client, section, ps):
    type_ = type_of(section)
    assert (await read(client, type_, f"lea-{section}", ps))["id"] == f"lea-{section}"
    assert f"{type_}/lea-{section}" in await found(client, section, ps)
    assert await count(client, section, ps) >= 1
    await create(client, section, ps, status=403)
    forbidden(await client.put(f"/{type_}/lea-{section}", json=seeded("lea", section), headers=ps))
    forbidden(await client.delete(f"/{type_}/lea-{section}", headers=ps))


@modes
@pytest.mark.parametrize("section", NOT_EMERGENCY)
async def test_an_emergency_access_gets_nothing_of_the_other_sections(client, section, ps):
    type_ = type_of(section)
    await read(client, type_, f"lea-{section}", ps, status=404)
    bundle = await search(client, f"{type_}?patient=Patient/lea", ps)
    assert bundle.get("total", 0) == 0 and matches(bundle) == set(), bundle
    assert await count(client, section, ps) == 0
    bundle = await search(client, f"Patient?_id=lea&_revinclude={type_}:patient", ps)
    assert everything(bundle) == {"Patient/lea"}, bundle
    bundle = await search(client, f"Patient?_has:{type_}:patient:_id=lea-{section}", ps)
    assert everything(bundle) == set(), bundle  # no oracle on what the record holds either
    await create(client, section, ps, status=403)


@modes
async def test_an_emergency_access_follows_no_link_out_of_the_emergency_sections(client, ps):
    include = "Condition?_id=lea-diseases&_include=Condition:evidence-detail"
    assert everything(await search(client, include, ps)) == {"Condition/lea-diseases"}
    assert everything(await search(client, include, MED)) == {"Condition/lea-diseases", "Observation/lea-blood-group"}
    revinclude = "Encounter?_id=lea-hospitalisations&_revinclude=Observation:encounter"
    assert everything(await search(client, revinclude, ps)) == {"Encounter/lea-hospitalisations"}
    assert "Observation/lea-measures" in everything(await search(client, revinclude, MED))
    chained = "Encounter?_has:Observation:encounter:code=http://loinc.org|29463-7"
    assert everything(await search(client, chained, ps)) == set()
    assert "Encounter/lea-hospitalisations" in everything(await search(client, chained, MED))


@modes
async def test_an_emergency_access_reads_only_advance_directives_among_consents(client, ps):
    bundle = await search(client, "Consent?patient=Patient/lea", ps)
    assert "Consent/lea-advance-directives" in matches(bundle)
    assert not {"Consent/permit-med", "Consent/deny-blocked"} & matches(bundle)  # privacy choices are not wishes


@modes
async def test_everything_under_an_emergency_access_holds_only_emergency_sections(client, ps):
    bundle = await search(client, "Patient/lea/$everything?_count=1000", ps)
    kinds = {ref.split("/")[0] for ref in everything(bundle)}
    assert kinds <= EMERGENCY_TYPES | {"Practitioner", "PractitionerRole", "Organization"}, kinds
    assert {"Immunization/lea-vaccinations", "Condition/lea-diseases", "Encounter/lea-hospitalisations"} <= everything(
        bundle
    )


# --- 6. leak probes ---------------------------------------------------------------------------------------------
OUTSIDERS = pytest.mark.parametrize("outsider", [MAX, STRANGER, BLOCKED], ids=["other-patient", "stranger", "blocked"])


@OUTSIDERS
@sections
async def test_outsiders_get_nothing_of_the_record(client, section, outsider):
    type_ = type_of(section)
    await read(client, type_, f"lea-{section}", outsider, status=404)
    bundle = await search(client, f"{type_}?patient=Patient/lea", outsider)
    assert bundle.get("total", 0) == 0 and matches(bundle) == set(), bundle
    assert await count(client, section, outsider) == 0
    bundle = await search(client, f"{type_}?_id=lea-{section}", outsider)
    assert matches(bundle) == set(), bundle
    bundle = await search(client, f"Patient?_id=lea&_revinclude={type_}:patient", outsider)
    assert not any(r.startswith(f"{type_}/") for r in everything(bundle)), bundle
    bundle = await search(client, f"Patient?_has:{type_}:patient:_id=lea-{section}", outsider)
    assert everything(bundle) == set(), bundle  # not even whether the record holds it
    r = await client.get(f"/{type_}/lea-{section}/_history", headers=outsider)
    assert r.status_code == 404, r.text


@OUTSIDERS
async def test_outsiders_get_nothing_through_everything(client, outsider):
    r = await client.get("/Patient/lea/$everything?_count=1000", headers=outsider)
    if outsider is STRANGER:  # the identity only: a professional needs it to deposit a document
        assert r.status_code == 200, r.text
        assert everything(r.json()) <= {"Patient/lea"}, r.text
    else:
        assert r.status_code == 404, r.text


async def test_a_token_claiming_a_representation_the_store_does_not_hold_reaches_nothing(client):
    forged = token("user/*.cruds", client_id="mes", sub="mallory", fhirUser="RelatedPerson/lea-tutor",
                   managed_patients=["lea"], represented=["lea"], **LONG)  # fmt: skip
    await read(client, "AllergyIntolerance", "lea-allergies", forged, status=404)
    assert await count(client, "allergies", forged) == 0
    await create(client, "allergies", forged, status=403)


async def test_an_unauthorised_professional_deposits_but_does_not_read_back(client):
    made = await create(client, "diseases", STRANGER)
    await read(client, "Condition", made["id"], STRANGER, status=404)
    await read(client, "Condition", made["id"], LEA)
    await create(client, "diseases", BLOCKED, status=403)  # a blocked professional deposits nothing either

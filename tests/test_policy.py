"""The Mon espace santé access policy as scenarios, on both stores, with the probes an attacker would try.

One record (Léa) holds a document of each class; professionals of five professions are authorised or
not, one is blocked, one is her médecin traitant, one an administrateur; Max refused emergency access in
advance, Nina refused masked documents in emergencies. Tokens come from the stand-in verifier of
test_access_control (claims as the authorization server signs them: ``ps``, ``fhirUser``, the
matrix-narrowed document scope, ``access-mode/…``); tests/test_professional_tokens.py tests issuance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import FHIR_BASE
from test_access_control import StandInVerifier, ids, token

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.policy import codes
from fhir_server.policy.matrix import HabilitationMatrix

FHIR = "application/fhir+json"
LOINC = "http://loinc.org"
A05 = "https://mos.esante.gouv.fr/NOS/TRE_A05-TypeDocComplementaire/FHIR/TRE-A05-TypeDocComplementaire"
CLASSES_A03 = "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument"
MATRIX = HabilitationMatrix.load()

# --- the directory ---------------------------------------------------------------------------------------------
PROFESSIONS = {"med": "10", "gp": "10", "admin": "10", "stranger": "10", "blocked": "10", "author": "10",
               "pharma": "21", "inf": "60", "dent": "40", "kine": "70"}  # fmt: skip


def directory() -> list[dict]:
    out: list[dict] = [{"resourceType": "Organization", "id": "org", "name": "Cabinet"}]
    for n, (name, profession) in enumerate(PROFESSIONS.items()):
        out.append({"resourceType": "Practitioner", "id": name,
                    "identifier": [{"system": codes.ID_NAT_PS, "value": f"81000000{n:04d}"}]})  # fmt: skip
        out.append({"resourceType": "PractitionerRole", "id": f"r-{name}",
                    "practitioner": {"reference": f"Practitioner/{name}"},
                    "organization": {"reference": "Organization/org"},
                    "code": [{"coding": [{"system": codes.TRE_G15, "code": profession}]}]})  # fmt: skip
    return out


def ps_token(name: str, mode: str = codes.NORMAL, **extra) -> dict[str, str]:
    """What the authorization server signs for this professional (their role, the matrix's document scope)."""
    profession = PROFESSIONS[name]
    scope = ["user/*.cruds", MATRIX.document_scope(profession, "user", "cruds"), "user/Binary.cruds"]
    if mode != codes.NORMAL:
        scope = ["user/*.rs", MATRIX.document_scope(profession, "user", "rs"), "user/Binary.rs", f"access-mode/{mode}"]
    ps = {"idNatPs": name, "profession": profession, "practitioner": f"Practitioner/{name}",
          "role": f"PractitionerRole/r-{name}", "organization": "Organization/org"}  # fmt: skip
    return token(" ".join(s for s in scope if s), fhirUser=f"PractitionerRole/r-{name}", ps=ps, **extra)


# --- the record ----------------------------------------------------------------------------------------------------
def document(id_: str, patient: str, type_: tuple[str, str], author: str = "med", labels: tuple[str, ...] = ()) -> dict:
    doc = {"resourceType": "DocumentReference", "id": id_, "status": "current",
           "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.3.{id_}"}],
           "type": {"coding": [{"system": type_[0], "code": type_[1]}]},
           "subject": {"reference": f"Patient/{patient}"}, "author": [{"reference": f"PractitionerRole/r-{author}"}],
           "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/bin-{id_}"}}]}  # fmt: skip
    if labels:
        doc["securityLabel"] = [{"coding": [{"system": codes.TRE_A07, "code": label}]} for label in labels]
    return doc


def binary(doc_id: str) -> dict:
    return {"resourceType": "Binary", "id": f"bin-{doc_id}", "contentType": "application/pdf", "data": "JVBERi0=",
            "securityContext": {"reference": f"DocumentReference/{doc_id}"}}  # fmt: skip


def consent(id_: str, patient: str, kind: str, actors: tuple[str, ...] = (), *, purpose: str | None = None,
            role: tuple[str, str] = (codes.V3_PARTICIPATION, codes.INFORMATION_RECIPIENT),
            label: str | None = None) -> dict:  # fmt: skip
    provision: dict = {"type": kind}
    if actors:
        provision["actor"] = [{"role": {"coding": [{"system": role[0], "code": role[1]}]},
                               "reference": {"reference": a}} for a in actors]  # fmt: skip
    if purpose:
        provision["purpose"] = [{"system": codes.V3_ACT_REASON, "code": purpose}]
    if label:
        provision["securityLabel"] = [{"system": codes.TRE_A07, "code": label}]
    return {"resourceType": "Consent", "id": id_, "status": "active",
            "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": codes.PATIENT_PRIVACY}]},
            "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{patient}"}, "provision": provision}  # fmt: skip


DOCS = {  # Léa's documents: (type, author, labels)
    "cr": ((LOINC, "11488-4"), "med", ()),  # compte rendu (class 10): every profession
    "psy": ((LOINC, "68599-0"), "med", ()),  # synthèse psychiatrique: not pharmacien, infirmier, dentiste
    "img": ((LOINC, "18748-4"), "med", ()),  # imagerie (31)
    "presc": ((LOINC, "57833-6"), "med", ()),  # prescription (42)
    "vacc": ((LOINC, "11369-6"), "med", ()),  # vaccination (52): not dentiste, kiné
    "resid": ((A05, "ATTEST-RESID"), "med", ()),  # attestation de résidence: no profession
    "masked": ((LOINC, "11488-4"), "author", (codes.MASQUE_PS,)),
    "hidden": ((LOINC, "11488-4"), "med", (codes.INVISIBLE_PATIENT,)),
    "norep": ((LOINC, "11488-4"), "med", (codes.INVISIBLE_REPRESENTANTS_LEGAUX,)),
}
LEA_DOCS = {f"lea-{k}" for k in DOCS}


def record() -> list[dict]:
    out = [
        {"resourceType": "Patient", "id": "lea", "generalPractitioner": [{"reference": "PractitionerRole/r-gp"}]},
        {"resourceType": "Patient", "id": "max"},
        {"resourceType": "Patient", "id": "nina"},
        {"resourceType": "RelatedPerson", "id": "mum", "patient": {"reference": "Patient/lea"}},
    ]
    for key, (type_, author, labels) in DOCS.items():
        out += [document(f"lea-{key}", "lea", type_, author, labels), binary(f"lea-{key}")]
    out += [document("max-cr", "max", (LOINC, "11488-4")), document("nina-cr", "nina", (LOINC, "11488-4")),
            document("nina-masked", "nina", (LOINC, "11488-4"), "author", (codes.MASQUE_PS,))]  # fmt: skip
    out += [
        {"resourceType": "Observation", "id": "lea-weight", "status": "final", "code": {"text": "poids"},
         "subject": {"reference": "Patient/lea"}},
        {"resourceType": "Immunization", "id": "lea-imm", "status": "completed", "vaccineCode": {"text": "DTP"},
         "patient": {"reference": "Patient/lea"}, "occurrenceDateTime": "2020-01-01"},
        {"resourceType": "Immunization", "id": "max-imm", "status": "completed", "vaccineCode": {"text": "DTP"},
         "patient": {"reference": "Patient/max"}, "occurrenceDateTime": "2020-01-01"},
    ]  # fmt: skip
    for name in ("med", "pharma", "inf", "dent", "kine", "blocked"):
        out.append(consent(f"permit-{name}", "lea", "permit", (f"PractitionerRole/r-{name}",)))
    out += [
        consent("deny-blocked", "lea", "deny", ("Practitioner/blocked",)),
        consent("admin", "lea", "permit", ("PractitionerRole/r-admin",), role=(codes.ACTOR_ROLE, codes.ADMINISTRATEUR)),
        consent("max-no-btg", "max", "deny", purpose="BTG"),
        consent("max-no-etreat", "max", "deny", purpose="ETREAT"),
        consent("nina-no-masked", "nina", "deny", purpose="BTG", label=codes.MASQUE_PS),
    ]
    return out


@contextlib.asynccontextmanager
async def policy_server(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        for resource in directory() + record():  # seeded while access is open (the operator's feed)
            r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        app.state.auth = StandInVerifier()
        yield c


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with policy_server(store_url) as c:
        yield c


async def visible_docs(c: httpx.AsyncClient, headers: dict, patient: str = "lea") -> set[str]:
    r = await c.get(f"/DocumentReference?subject=Patient/{patient}&_count=100", headers=headers)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["total"] == len(bundle.get("entry", []))
    return set(ids(bundle))


def matrix_allows(profession: str, key: str) -> bool:
    return MATRIX.allows(profession, *DOCS[key][0])


# --- normal mode: matrix and authorisation --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["med", "pharma", "inf", "dent", "kine"])
async def test_authorised_professionals_see_what_their_profession_may(client, name):
    profession = PROFESSIONS[name]
    expected = {f"lea-{k}" for k in DOCS if matrix_allows(profession, k) and k != "masked"}
    assert await visible_docs(client, ps_token(name)) == expected
    for key in DOCS:  # reads agree with the search, Binary follows its document
        status = 200 if f"lea-{key}" in expected else 404
        assert (await client.get(f"/DocumentReference/lea-{key}", headers=ps_token(name))).status_code == status
        assert (await client.get(f"/Binary/bin-lea-{key}", headers=ps_token(name))).status_code == status
    # the rest of the record (not ruled by the matrix) is reachable too
    assert (await client.get("/Observation/lea-weight", headers=ps_token(name))).status_code == 200


def test_the_matrix_cells_the_scenarios_rely_on():
    assert all(matrix_allows("10", k) for k in DOCS if k != "resid")
    assert not any(matrix_allows(p, "resid") for p in set(PROFESSIONS.values()))
    assert not matrix_allows("40", "psy") and not matrix_allows("21", "psy") and not matrix_allows("60", "psy")


async def test_without_authorisation_a_professional_reads_nothing_of_the_record(client):
    h = ps_token("stranger")
    assert await visible_docs(client, h) == set()
    for path in ("/DocumentReference/lea-cr", "/Binary/bin-lea-cr", "/Observation/lea-weight", "/Immunization/lea-imm",
                 "/Consent/permit-med", "/DocumentReference/lea-cr/_history/1"):  # fmt: skip
        r = await client.get(path, headers=h)
        assert r.status_code == 404, path
        assert "is not known" in str(r.json())  # the same answer as for an id that does not exist
    # the identity (to deposit, PDSm4DMP): yes
    assert (await client.get("/Patient/lea", headers=h)).status_code == 200


async def test_medecin_traitant_administrateur_and_author_see_masked_documents(client):
    for name in ("gp", "admin"):
        assert await visible_docs(client, ps_token(name)) == LEA_DOCS - {"lea-resid"}, name
    # the author, even unauthorised, sees what they wrote (and only that)
    assert await visible_docs(client, ps_token("author")) == {"lea-masked"}
    assert "lea-masked" not in await visible_docs(client, ps_token("med"))  # authorised, not privileged


async def test_a_blocked_professional_reaches_nothing_in_any_mode(client):
    for mode in codes.ACCESS_MODES:
        h = ps_token("blocked", mode, justification="arrêt cardiaque")
        assert await visible_docs(client, h) == set(), mode
        assert (await client.get("/Patient/lea", headers=h)).status_code == 404
        assert (await client.get("/Immunization/lea-imm", headers=h)).status_code == 404
        assert (await client.get("/Patient?_id=lea", headers=h)).json()["total"] == 0
    # nor can they deposit
    r = await client.post("/DocumentReference", json=document("x", "lea", (LOINC, "11488-4"), "blocked"),
                          headers=ps_token("blocked"))  # fmt: skip
    assert r.status_code == 403


# --- emergency modes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [codes.BRIS_DE_GLACE, codes.CENTRE_15])
async def test_emergency_access_reads_the_emergency_sections(client, mode):
    h = ps_token("stranger", mode, justification="patient inconscient")
    # masked documents too (Léa did not refuse them), within the profession's document types
    assert await visible_docs(client, h) == LEA_DOCS - {"lea-resid"}
    assert (await client.get("/Immunization/lea-imm", headers=h)).status_code == 200
    assert (await client.get("/Observation/lea-weight", headers=h)).status_code == 404  # not an emergency section
    assert (await client.get("/Consent/permit-med", headers=h)).status_code == 404  # privacy choices: no
    # Max refused emergency access in advance
    assert await visible_docs(client, h, "max") == set()
    assert (await client.get("/Immunization/max-imm", headers=h)).status_code == 404
    # reads only
    r = await client.post("/DocumentReference", json=document("y", "lea", (LOINC, "11488-4"), "stranger"), headers=h)
    assert r.status_code == 403
    r = await client.delete("/DocumentReference/lea-cr", headers=h)
    assert r.status_code == 403


async def test_masked_documents_in_emergencies_follow_the_patients_choice(client):
    h = ps_token("stranger", codes.BRIS_DE_GLACE, justification="urgence")
    assert await visible_docs(client, h, "nina") == {"nina-cr"}  # Nina refused masked documents
    assert await visible_docs(client, ps_token("author", codes.BRIS_DE_GLACE), "nina") == {"nina-cr", "nina-masked"}
    # centre_15 is a different purpose: her refusal named BTG only
    assert await visible_docs(client, ps_token("stranger", codes.CENTRE_15), "nina") == {"nina-cr", "nina-masked"}


# --- the patient side -----------------------------------------------------------------------------------------------
async def test_invisible_documents_on_the_patient_side(client):
    lea = token("patient/*.rs", patient="lea", fhirUser="Patient/lea")
    assert await visible_docs(client, lea) == LEA_DOCS - {"lea-hidden"}
    assert (await client.get("/Binary/bin-lea-hidden", headers=lea)).status_code == 404
    app = token("patient/*.rs", patient="lea")  # an app Léa launched
    assert await visible_docs(client, app) == LEA_DOCS - {"lea-hidden"}
    mum = token("user/*.rs", fhirUser="RelatedPerson/mum", managed_patients=["lea"])
    assert await visible_docs(client, mum) == LEA_DOCS - {"lea-hidden", "lea-norep"}
    assert (await client.get("/DocumentReference/lea-norep", headers=mum)).status_code == 404
    assert (await client.get("/Binary/bin-lea-norep", headers=mum)).status_code == 404
    mum_app = token("patient/*.rs", patient="lea", fhirUser="RelatedPerson/mum")
    assert await visible_docs(client, mum_app) == LEA_DOCS - {"lea-hidden", "lea-norep"}


# --- leak probes --------------------------------------------------------------------------------------------------
async def test_leak_probes_of_a_restricted_professional(client):
    h = ps_token("dent")  # authorised, but the matrix denies the psychiatric synthesis; not privileged
    visible = await visible_docs(client, h)
    assert "lea-psy" not in visible and "lea-masked" not in visible
    q = "DocumentReference?subject=Patient/lea"
    assert (await client.get(f"/{q}&_summary=count", headers=h)).json()["total"] == len(visible)
    assert (await client.get(f"/{q}&_total=accurate&_count=1", headers=h)).json()["total"] == len(visible)
    rev = (await client.get("/Patient?_id=lea&_revinclude=DocumentReference:subject", headers=h)).json()
    assert set(ids(rev, "include")) == visible
    psy_type = f"{LOINC}|68599-0"
    for probe in (f"/Patient?_has:DocumentReference:subject:type={psy_type}",
                  "/Patient?_has:DocumentReference:subject:security-label=MASQUE_PS",
                  "/Patient?_has:Consent:patient:actor=Practitioner/blocked",
                  f"/DocumentReference?subject.general-practitioner=PractitionerRole/r-gp&type={psy_type}",
                  ):  # fmt: skip
        assert (await client.get(probe, headers=h)).json()["total"] == 0, probe
    for path in ("/DocumentReference/lea-psy", "/DocumentReference/lea-psy/_history",
                 "/DocumentReference/lea-psy/_history/1", "/Binary/bin-lea-psy", "/Binary/bin-lea-masked"):  # fmt: skip
        assert (await client.get(path, headers=h)).status_code == 404, path
    everything = (await client.get("/Patient/lea/$everything?_count=200", headers=h)).json()
    found = {e["resource"]["id"] for e in everything.get("entry", [])}
    assert "lea-psy" not in found and "lea-masked" not in found and "lea-cr" in found
    assert not {"deny-blocked", "admin", "permit-med"} & found  # others' privacy choices
    # type and system history are refused to confined callers
    assert (await client.get("/DocumentReference/_history", headers=h)).status_code == 403
    # a batch answers per entry with the same rules
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "DocumentReference/lea-psy"}},
        {"request": {"method": "GET", "url": "DocumentReference/lea-cr"}},
        {"request": {"method": "GET", "url": f"DocumentReference?subject=Patient/lea&type={psy_type}"}}]}  # fmt: skip
    result = (await client.post("/", json=batch, headers=h)).json()
    assert [e["response"]["status"][:3] for e in result["entry"]] == ["404", "200", "200"]
    assert result["entry"][2]["resource"]["total"] == 0


async def test_an_older_version_follows_the_current_one(client):
    gp = ps_token("gp")
    masked = document("lea-cr", "lea", (LOINC, "11488-4"), "med", (codes.MASQUE_PS,))
    lea = token("patient/*.cruds", patient="lea", fhirUser="Patient/lea")
    assert (await client.put("/DocumentReference/lea-cr", json=masked, headers=lea)).status_code == 200
    med = ps_token("med")  # the author: still sees it
    assert (await client.get("/DocumentReference/lea-cr/_history/1", headers=med)).status_code == 200
    pharma = ps_token("pharma")
    assert (await client.get("/DocumentReference/lea-cr", headers=pharma)).status_code == 404
    assert (await client.get("/DocumentReference/lea-cr/_history/1", headers=pharma)).status_code == 404
    assert (await client.get("/DocumentReference/lea-cr/_history/2", headers=gp)).status_code == 200


async def test_conditional_writes_do_not_match_what_the_caller_cannot_see(client):
    h = ps_token("dent")
    psy = document("new-psy", "lea", (LOINC, "11488-4"), "dent")
    criteria = "identifier=urn:ietf:rfc:3986|urn:oid:1.2.3.lea-psy"
    # If-None-Exist sees no match (the psychiatric synthesis is out of reach): a new document, not lea-psy
    r = await client.post("/DocumentReference", json=psy, headers={**h, "If-None-Exist": criteria})
    assert r.status_code == 201 and r.json()["id"] != "lea-psy"
    # conditional delete matches nothing it may not see
    assert (
        await client.delete("/DocumentReference?subject=Patient/lea&type=http://loinc.org|68599-0", headers=h)
    ).status_code == 204
    assert (await client.get("/DocumentReference/lea-psy", headers=ps_token("gp"))).status_code == 200
    # a conditional update by criteria matching a hidden document creates instead of overwriting it
    body = {k: v for k, v in psy.items() if k != "id"}
    r = await client.put(f"/DocumentReference?{criteria}", json=body, headers=h)
    assert r.status_code == 201 and r.json()["id"] != "lea-psy", r.text
    kept = (await client.get("/DocumentReference/lea-psy", headers=ps_token("gp"))).json()
    assert kept["author"] == [{"reference": "PractitionerRole/r-med"}] and kept["meta"]["versionId"] == "1"


# --- writes ----------------------------------------------------------------------------------------------------
async def test_deposits_and_who_changes_a_document(client):
    # any professional who is not blocked deposits (the DMP's rule), and reads back what they wrote
    stranger = ps_token("stranger")
    r = await client.post(
        "/DocumentReference", json=document("dep", "lea", (LOINC, "11488-4"), "stranger"), headers=stranger
    )
    assert r.status_code == 201, r.text
    new_id = r.json()["id"]
    assert (await client.get(f"/DocumentReference/{new_id}", headers=stranger)).status_code == 200
    assert await visible_docs(client, stranger) == {new_id}
    # only the author changes its status
    patch = [{"op": "replace", "path": "/status", "value": "entered-in-error"}]
    jp = {"Content-Type": "application/json-patch+json"}
    r = await client.patch("/DocumentReference/lea-cr", json=patch, headers={**ps_token("gp"), **jp})
    assert r.status_code == 403, r.text  # they see it (médecin traitant), they may not change it
    assert (
        await client.patch("/DocumentReference/lea-cr", json=patch, headers={**ps_token("med"), **jp})
    ).status_code == 200
    assert (await client.delete("/DocumentReference/lea-img", headers=ps_token("gp"))).status_code == 403
    assert (await client.delete("/DocumentReference/lea-img", headers=ps_token("med"))).status_code == 204


async def test_the_patient_masks_a_professionals_document_and_changes_nothing_else(client):
    lea = token("patient/*.cruds", patient="lea", fhirUser="Patient/lea")
    jp = {**lea, "Content-Type": "application/json-patch+json"}
    mask = [
        {
            "op": "add",
            "path": "/securityLabel",
            "value": [{"coding": [{"system": codes.TRE_A07, "code": codes.MASQUE_PS}]}],
        }
    ]
    assert (await client.patch("/DocumentReference/lea-presc", json=mask, headers=jp)).status_code == 200
    assert "lea-presc" not in await visible_docs(client, ps_token("pharma"))
    assert "lea-presc" in await visible_docs(client, ps_token("gp"))
    assert "lea-presc" in await visible_docs(client, ps_token("med"))  # its author
    status = [{"op": "replace", "path": "/status", "value": "superseded"}]
    r = await client.patch("/DocumentReference/lea-presc", json=status, headers=jp)
    assert r.status_code == 403 and "MASQUE_PS" in r.text
    unhide = [
        {
            "op": "add",
            "path": "/securityLabel/-",
            "value": {"coding": [{"system": codes.TRE_A07, "code": codes.INVISIBLE_REPRESENTANTS_LEGAUX}]},
        }
    ]
    assert (await client.patch("/DocumentReference/lea-presc", json=unhide, headers=jp)).status_code == 403
    assert (await client.delete("/DocumentReference/lea-presc", headers=lea)).status_code == 403  # a PS's document
    own = document("lea-own", "lea", (A05, "DOCPAT03"))
    own["author"] = [{"reference": "Patient/lea"}]
    own["category"] = [{"coding": [{"system": CLASSES_A03, "code": "10"}]}]  # its DMP class (record/documents.py)
    assert (await client.put("/DocumentReference/lea-own", json=own, headers=lea)).status_code == 201
    assert (await client.delete("/DocumentReference/lea-own", headers=lea)).status_code == 204


async def test_who_may_write_privacy_consents(client):
    med, gp, lea = ps_token("med"), ps_token("gp"), token("patient/*.cruds", patient="lea", fhirUser="Patient/lea")
    # a professional's software records the patient's authorisation of that professional, on any record
    r = await client.post("/Consent", json=consent("m1", "max", "permit", ("PractitionerRole/r-med",)), headers=med)
    assert r.status_code == 201, r.text
    assert await visible_docs(client, med, "max") == {"max-cr"}
    # … not a block, nor an authorisation of someone else
    for body in (consent("m2", "lea", "deny", ("PractitionerRole/r-stranger",)),
                 consent("m3", "lea", "permit", ("PractitionerRole/r-stranger",))):  # fmt: skip
        assert (await client.post("/Consent", json=body, headers=med)).status_code == 403
    # the médecin traitant may block another professional; nobody may block the médecin traitant
    assert (
        await client.post("/Consent", json=consent("g1", "lea", "deny", ("PractitionerRole/r-pharma",)), headers=gp)
    ).status_code == 201
    assert await visible_docs(client, ps_token("pharma")) == set()
    r = await client.post("/Consent", json=consent("l1", "lea", "deny", ("PractitionerRole/r-gp",)), headers=lea)
    assert r.status_code == 422 and "médecin traitant" in r.text
    # only the patient names administrateurs
    admin = consent("a2", "lea", "permit", ("PractitionerRole/r-med",), role=(codes.ACTOR_ROLE, codes.ADMINISTRATEUR))
    assert (await client.post("/Consent", json=admin, headers=gp)).status_code == 403
    assert (await client.post("/Consent", json=admin, headers=lea)).status_code == 201
    assert "lea-masked" in await visible_docs(client, med)
    # revoking an authorisation takes effect on the next request, whatever the token says
    assert (await client.delete("/Consent/permit-kine", headers=lea)).status_code == 204
    assert await visible_docs(client, ps_token("kine")) == set()


async def exported_ids(client: httpx.AsyncClient, url: str, headers: dict) -> set[str]:
    kick = await client.get(url, headers={**headers, "Prefer": "respond-async"})
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["content-location"].removeprefix(FHIR_BASE)
    for _ in range(400):
        status = await client.get(status_url, headers=headers)
        if status.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert status.status_code == 200, status.text
    found = set()
    for output in status.json()["output"]:
        text = (await client.get(output["url"].removeprefix(FHIR_BASE), headers=headers)).text
        found |= {json.loads(line)["id"] for line in text.splitlines()}
    return found


async def test_export_holds_only_what_the_professional_may_see(client, tmp_path):
    client._transport.app.state.exports.directory = tmp_path  # type: ignore[attr-defined]
    h = ps_token("dent")
    visible = await visible_docs(client, h)
    # nothing of Max or Nina, no psychiatric synthesis, no masked document; of the privacy Consents, only the
    # one naming the dentist
    for url in ("/Patient/$export?_type=DocumentReference,Consent", "/$export?_type=DocumentReference,Consent"):
        assert await exported_ids(client, url, h) == visible | {"permit-dent"}, url


async def test_conditional_patch_of_a_document_is_limited_to_status_labels_and_archive(client):
    med = {**ps_token("med"), "Content-Type": "application/json-patch+json"}
    url = "/DocumentReference?identifier=urn:ietf:rfc:3986|urn:oid:1.2.3.lea-img"
    status = [{"op": "replace", "path": "/status", "value": "superseded"}]
    assert (await client.patch(url, json=status, headers=med)).status_code == 200
    other = [{"op": "add", "path": "/description", "value": "changed"}]
    r = await client.patch(url, json=other, headers=med)
    assert r.status_code == 405 and "description" in r.text
    archive = [{"op": "add", "path": "/extension", "value": [
        {"url": "https://github.com/fhir-server/fhir-server/StructureDefinition/mes-document-archived",
         "valueBoolean": True}]}]  # fmt: skip
    assert (await client.patch(url, json=archive, headers=med)).status_code == 200
    foreign = [{"op": "add", "path": "/extension/-", "value": {"url": "https://example.org/x", "valueBoolean": True}}]
    assert (await client.patch(url, json=foreign, headers=med)).status_code == 405
    # the same rule as any change: only the author (the médecin traitant sees it, may not change it)
    gp = {**ps_token("gp"), "Content-Type": "application/json-patch+json"}
    assert (await client.patch(url, json=status, headers=gp)).status_code in (403, 404)


async def test_every_emergency_request_reaches_the_hook_without_logging_the_justification(client, caplog):
    from fhir_server.policy import emergency

    seen: list[emergency.EmergencyAccess] = []
    stop = emergency.on_emergency_access(seen.append)
    try:
        h = ps_token("stranger", codes.BRIS_DE_GLACE, justification="arrêt cardio-respiratoire au domicile")
        await client.get("/DocumentReference?subject=Patient/lea", headers=h)
        await client.get("/Immunization/lea-imm", headers=h)
        await client.get("/Patient/lea", headers=ps_token("med"))  # normal mode: not reported
    finally:
        stop()
    assert [(e.mode, e.method, e.justification) for e in seen] == [
        (codes.BRIS_DE_GLACE, "GET", "arrêt cardio-respiratoire au domicile")
    ] * 2
    assert seen[0].professional.role == "PractitionerRole/r-stranger"
    assert "emergency access: mode=bris_de_glace" in caplog.text and "cardio" not in caplog.text


async def test_a_document_carries_one_type_coding(client):
    two = document("two", "lea", (LOINC, "11488-4"), "med")
    two["type"]["coding"].append({"system": LOINC, "code": "68599-0"})  # an allowed type beside a denied one
    r = await client.post("/DocumentReference", json=two, headers=ps_token("med"))
    assert r.status_code == 422 and "one type coding" in r.text


async def test_new_documents_arrive_masked_when_the_patient_says_so(client):
    lea = token("patient/*.cruds", patient="lea", fhirUser="Patient/lea")
    setting = consent("mask-new", "lea", "deny", label=codes.MASQUE_PS)
    assert (await client.put("/Consent/mask-new", json=setting, headers=lea)).status_code == 201
    r = await client.post(
        "/DocumentReference", json=document("n1", "lea", (LOINC, "11488-4"), "med"), headers=ps_token("med")
    )
    assert r.status_code == 201, r.text
    new_id = r.json()["id"]
    assert codes.MASQUE_PS in r.text  # stored (and answered) masked
    assert new_id not in await visible_docs(client, ps_token("pharma"))
    assert new_id in await visible_docs(client, ps_token("gp"))
    # a backend feed's deposits follow the setting too; documents deposited before it are untouched
    system = token("system/*.cruds")
    r = await client.post("/DocumentReference", json=document("n2", "lea", (LOINC, "11488-4"), "kine"), headers=system)
    assert r.status_code == 201 and codes.MASQUE_PS in r.text
    assert "lea-cr" in await visible_docs(client, ps_token("pharma"))
    # Max has no such setting
    r = await client.post("/DocumentReference", json=document("n3", "max", (LOINC, "11488-4"), "med"), headers=system)
    assert r.status_code == 201 and codes.MASQUE_PS not in r.text


async def test_the_patient_masks_every_document_at_once(client):
    lea = token("patient/*.cruds", patient="lea", fhirUser="Patient/lea")
    r = await client.post("/Patient/lea/$mask-documents", headers=lea)
    assert r.status_code == 200, r.text
    # every document she sees but lea-masked, already masked (not the ones hidden from her)
    assert "7 document(s) masked" in r.text
    # what is hidden from her, she cannot mask: its author decides
    assert await visible_docs(client, ps_token("pharma")) == {"lea-hidden"}
    assert await visible_docs(client, ps_token("gp")) == LEA_DOCS - {"lea-resid"}
    unmask = {"resourceType": "Parameters", "parameter": [{"name": "mask", "valueBoolean": False}]}
    r = await client.post("/Patient/lea/$mask-documents", json=unmask, headers=lea)
    assert r.status_code == 200 and "8 document(s) unmasked" in r.text  # lea-masked too: her choice
    assert "lea-masked" in await visible_docs(client, ps_token("pharma"))
    # not a professional's operation, and nobody else's record
    assert (await client.post("/Patient/lea/$mask-documents", headers=ps_token("gp"))).status_code == 403
    r = await client.post("/Patient/max/$mask-documents", headers=lea)
    assert r.status_code == 200 and "0 document(s)" in r.text
    max_cr = await client.get("/DocumentReference/max-cr", headers=token("system/*.rs"))
    assert codes.MASQUE_PS not in max_cr.text  # untouched


async def test_more_leak_probes_include_transaction_and_wording(client):
    """_include of a hidden target, a transaction's responses, and 404 wording equal to an unknown id's."""
    h = ps_token("dent")
    related = document("lea-rel", "lea", (LOINC, "11488-4"), "med")
    related["relatesTo"] = [{"code": "appends", "target": {"reference": "DocumentReference/lea-psy"}},
                            {"code": "appends", "target": {"reference": "DocumentReference/lea-masked"}}]  # fmt: skip
    assert (
        await client.put("/DocumentReference/lea-rel", json=related, headers=token("system/*.cruds"))
    ).status_code == 201
    found = (await client.get("/DocumentReference?_id=lea-rel&_include=DocumentReference:relatesto", headers=h)).json()
    assert ids(found) == ["lea-rel"] and found["total"] == 1
    # a transaction answers under the same rules: a hidden document's search is empty, its read fails the whole
    psy_type = f"{LOINC}|68599-0"
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"DocumentReference?subject=Patient/lea&type={psy_type}"}},
        {"request": {"method": "GET", "url": "DocumentReference/lea-cr"}}]}  # fmt: skip
    r = await client.post("/", json=transaction, headers=h)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["resource"]["total"] == 0 and entries[1]["resource"]["id"] == "lea-cr"
    for missing in ("lea-psy", "no-such-document"):
        one = {"resourceType": "Bundle", "type": "transaction",
               "entry": [{"request": {"method": "GET", "url": f"DocumentReference/{missing}"}}]}  # fmt: skip
        r = await client.post("/", json=one, headers=h)
        assert r.status_code == 404 and "psy" not in r.text.replace("lea-psy", ""), r.text
    # a hidden resource and an unknown id read alike (status and wording, but for the id itself)
    hidden = await client.get("/DocumentReference/lea-psy", headers=h)
    unknown = await client.get("/DocumentReference/lea-nope", headers=h)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.text.replace("lea-psy", "X") == unknown.text.replace("lea-nope", "X")
    for path in ("/Binary/bin-lea-psy", "/Binary/bin-lea-nope"):
        assert (await client.get(path, headers=h)).status_code == 404


async def test_a_block_holds_from_the_next_request_though_the_reads_were_served_from_cache(client):
    """The SQLite store caches a professional's visibility verdicts (store/read_cache.py): the patient's new
    block (a Consent, another type than what is read) must turn every channel over at the next request, and
    its lifting turn them back."""
    med, lea = ps_token("med"), token("patient/*.cruds", patient="lea", fhirUser="Patient/lea")
    reads = ("/DocumentReference/lea-cr", "/DocumentReference/lea-cr/_history/1", "/Binary/bin-lea-cr",
             "/Immunization/lea-imm")  # fmt: skip
    for _ in range(2):  # the second time from the caches
        for path in reads:
            assert (await client.get(path, headers=med)).status_code == 200, path
    r = await client.put("/Consent/block-med", json=consent("block-med", "lea", "deny", ("Practitioner/med",)),
                         headers=lea)  # fmt: skip
    assert r.status_code in (200, 201), r.text
    for path in reads:
        r = await client.get(path, headers=med)
        assert r.status_code == 404 and "is not known" in r.text, path
    assert await visible_docs(client, med) == set()
    r = await client.get("/DocumentReference?subject=Patient/lea&_summary=count", headers=med)
    assert r.json()["total"] == 0
    assert (await client.delete("/Consent/block-med", headers=lea)).status_code in (200, 204)
    for path in reads:
        assert (await client.get(path, headers=med)).status_code == 200, path

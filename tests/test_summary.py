"""``Patient/[id]/$summary`` (IPS) on both stores: the document Bundle holds what each caller may see under
the access policy (the patient everything of theirs; an authorised professional not a masked document; bris de
glace the emergency sections only; an unauthorised one nothing of the record; a blocked one and another patient
404), the PDF reads back in French with its sections and spans pages on a long list, and the audit trail names
the patient after a PDF answer as after a Bundle.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import FHIR_BASE
from pypdf import PdfReader
from test_access_control import StandInVerifier, token
from test_policy import directory, document, ps_token, record

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.policy import codes

LONG = {"exp": int(time.time()) + 24 * 3600}  # minted at import: valid however long the suite runs
LEA = token("patient/*.rs", client_id="mes-app", sub="lea-sub", fhirUser="Patient/lea", patient="lea", **LONG)
MAX = token("patient/*.rs", client_id="mes-app", sub="max-sub", fhirUser="Patient/max", patient="max", **LONG)
SYSTEM = token("system/*.cruds", client_id="feed", sub="feed", **LONG)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
VITALS = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]
TITLES = ["Allergies", "Problèmes de santé", "Traitements", "Vaccinations", "Dernières mesures",
          "Directives anticipées", "Médecin traitant", "Entourage"]  # fmt: skip
LEA_REF = {"reference": "Patient/lea"}


def weight(id_: str, kg: float, when: str) -> dict:
    return {"resourceType": "Observation", "id": id_, "status": "final", "category": VITALS, "subject": LEA_REF,
            "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": kg, "unit": "kg", "system": UCUM, "code": "kg"}}  # fmt: skip


def profile() -> list[dict]:
    """Léa's medical profile, her médecin traitant's name, her entourage and her advance directives (whose signed
    document she masked from professionals)."""
    directive_doc = document("lea-ad-doc", "lea", (LOINC, "11488-4"), "author", (codes.MASQUE_PS,))
    directive_doc["description"] = "Mes directives anticipées signées"
    return [
        {"resourceType": "Patient", "id": "lea", "name": [{"family": "Lefèvre", "given": ["Léa"]}],
         "birthDate": "1990-04-12", "gender": "female", "generalPractitioner": [{"reference": "PractitionerRole/r-gp"}],
         "identifier": [{"system": codes.INS_NIR, "value": "290049912345678"}]},
        {"resourceType": "Practitioner", "id": "gp", "name": [{"family": "Dupré", "given": ["Hélène"]}]},
        {"resourceType": "AllergyIntolerance", "id": "lea-allergy", "patient": LEA_REF, "criticality": "high",
         "code": {"text": "Pénicilline"}},
        {"resourceType": "Condition", "id": "lea-asthma", "subject": LEA_REF, "code": {"text": "Asthme"},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]}},
        {"resourceType": "Condition", "id": "lea-wrong", "subject": LEA_REF, "code": {"text": "Diabète (erreur)"},
         "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                            "code": "entered-in-error"}]}},
        {"resourceType": "MedicationStatement", "id": "lea-ventoline", "status": "active", "subject": LEA_REF,
         "medicationCodeableConcept": {"text": "Ventoline 100 µg"}, "dosage": [{"text": "2 bouffées si besoin"}]},
        weight("lea-w1", 60, "2024-01-01"), weight("lea-w2", 62, "2025-01-01"),
        {"resourceType": "Consent", "id": "lea-ad", "status": "active", "patient": LEA_REF, "dateTime": "2024-05-02",
         "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": codes.ADVANCE_DIRECTIVE}]},
         "category": [{"coding": [{"system": LOINC, "code": "42348-3"}], "text": "Directives anticipées"}],
         "sourceReference": {"reference": "DocumentReference/lea-ad-doc"}},
        directive_doc,
        {"resourceType": "RelatedPerson", "id": "lea-sister", "patient": LEA_REF,
         "name": [{"family": "Lefèvre", "given": ["Zoé"]}], "telecom": [{"system": "phone", "value": "0601020304"}],
         "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                       "code": "SIS"}]}]},
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def summary_server(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        for resource in directory() + record() + profile():  # seeded while access is open (the operator's feed)
            r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code in (200, 201), r.text
        app.state.auth = StandInVerifier()
        yield c


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with summary_server(store_url) as c:
        yield c


async def summary(c: httpx.AsyncClient, headers: dict, patient: str = "lea") -> dict:
    r = await c.get(f"/Patient/{patient}/$summary", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    return r.json()


def sections(bundle: dict) -> dict[str, dict]:
    composition = bundle["entry"][0]["resource"]
    return {s["title"]: s for s in composition["section"]}


def section_refs(bundle: dict, title: str) -> set[str]:
    return {e["reference"] for e in sections(bundle)[title].get("entry", ())}


def entry_refs(bundle: dict) -> set[str]:
    """The stored resources of the document (not its Composition and author Device, made for it)."""
    entries = (e for e in bundle["entry"] if not e["fullUrl"].startswith("urn:uuid:"))
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries}


def empty_reason(bundle: dict, title: str) -> str | None:
    reason = sections(bundle)[title].get("emptyReason")
    return reason["coding"][0]["code"] if reason else None


EVERYTHING = {
    "Allergies": {"AllergyIntolerance/lea-allergy"},
    "Problèmes de santé": {"Condition/lea-asthma"},  # not the one entered in error
    "Traitements": {"MedicationStatement/lea-ventoline"},
    "Vaccinations": {"Immunization/lea-imm"},
    "Dernières mesures": {"Observation/lea-w2"},  # the last weight only; lea-weight is no vital sign
    "Directives anticipées": {"Consent/lea-ad", "DocumentReference/lea-ad-doc"},
    "Médecin traitant": {"PractitionerRole/r-gp", "Practitioner/gp"},
    "Entourage": {"RelatedPerson/mum", "RelatedPerson/lea-sister"},
}


async def test_the_patient_gets_an_ips_document_of_everything_of_theirs(client):
    bundle = await summary(client, LEA)
    assert bundle["type"] == "document" and bundle["identifier"]["value"].startswith("urn:uuid:")
    composition = bundle["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition" and composition["status"] == "final"
    assert composition["type"]["coding"][0]["code"] == "60591-5"  # LOINC Patient summary Document
    assert composition["subject"] == {"reference": "Patient/lea"} and composition["date"] == bundle["timestamp"]
    author = composition["author"][0]["reference"]
    assert next(e for e in bundle["entry"] if e["fullUrl"] == author)["resource"]["resourceType"] == "Device"
    codes_ = [s["code"]["coding"][0]["code"] for s in composition["section"]]
    assert codes_[:6] == ["48765-2", "11450-4", "10160-0", "11369-6", "8716-3", "42348-3"]
    assert [s["title"] for s in composition["section"]] == TITLES
    assert {t: section_refs(bundle, t) for t in TITLES} == EVERYTHING
    assert entry_refs(bundle) == {"Patient/lea"} | set().union(*EVERYTHING.values())
    # every section reference resolves inside the document; narratives say what a reader sees
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert all(f"{FHIR_BASE}/{ref}" in urls for refs in EVERYTHING.values() for ref in refs)
    assert "Pénicilline — criticité élevée" in sections(bundle)["Allergies"]["text"]["div"]
    assert "Zoé Lefèvre — sœur — 0601020304" in sections(bundle)["Entourage"]["text"]["div"]
    assert "62 kg — le 01/01/2025" in sections(bundle)["Dernières mesures"]["text"]["div"]


async def test_an_authorised_professional_never_sees_the_masked_document(client):
    bundle = await summary(client, ps_token("med", **LONG))
    expected = dict(EVERYTHING, **{"Directives anticipées": {"Consent/lea-ad"}})
    assert {t: section_refs(bundle, t) for t in TITLES} == expected
    assert "DocumentReference/lea-ad-doc" not in entry_refs(bundle) and "signées" not in str(bundle)
    # the médecin traitant sees masked documents (policy): the signed directives are in theirs
    gp = await summary(client, ps_token("gp", **LONG))
    assert "DocumentReference/lea-ad-doc" in section_refs(gp, "Directives anticipées")


async def test_bris_de_glace_reaches_the_emergency_sections_only(client):
    h = ps_token("stranger", codes.BRIS_DE_GLACE, justification="patiente inconsciente", **LONG)
    bundle = await summary(client, h)
    for title in ("Allergies", "Traitements", "Dernières mesures"):  # not emergency sections (policy/rules.py)
        assert section_refs(bundle, title) == set() and empty_reason(bundle, title) == "withheld", title
    for title in ("Problèmes de santé", "Vaccinations", "Entourage"):
        assert section_refs(bundle, title) == EVERYTHING[title], title
    assert "Consent/lea-ad" in section_refs(bundle, "Directives anticipées")
    types = {ref.split("/")[0] for ref in entry_refs(bundle)}
    assert not types & {"AllergyIntolerance", "MedicationStatement", "Observation"}


async def test_an_unauthorised_professional_gets_nothing_of_the_record(client):
    bundle = await summary(client, ps_token("stranger", **LONG))
    record_types = {ref.split("/")[0] for ref in entry_refs(bundle)} - {"Patient", "Practitioner", "PractitionerRole"}
    assert record_types == set()
    assert all(empty_reason(bundle, t) == "unavailable" for t in TITLES if t != "Médecin traitant")
    assert "Pénicilline" not in str(bundle) and "Asthme" not in str(bundle)


async def test_a_blocked_professional_and_another_patient_get_404(client):
    for headers in (ps_token("blocked", **LONG), MAX):
        r = await client.get("/Patient/lea/$summary", headers=headers)
        assert r.status_code == 404, r.text
        assert "Pénicilline" not in r.text
    r = await client.get("/Patient/lea/$summary?_format=pdf", headers=MAX)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/fhir+json")


async def test_parameters_are_checked(client):
    r = await client.get("/Patient/lea/$summary?profile=http://example.org/other", headers=LEA)
    assert r.status_code == 400 and "IPS profile" in r.text
    r = await client.get("/Patient/lea/$summary?since=2020", headers=LEA)
    assert r.status_code == 400
    ok = await client.get("/Patient/lea/$summary?profile=http://hl7.org/fhir/uv/ips/StructureDefinition/Bundle-uv-ips",
                          headers=LEA)  # fmt: skip
    assert ok.status_code == 200


def pdf_text(content: bytes) -> tuple[str, list[str]]:
    pages = [page.extract_text() for page in PdfReader(io.BytesIO(content)).pages]
    return "\n".join(pages), pages


async def test_the_pdf_in_french_with_its_sections(client):
    r = await client.get("/Patient/lea/$summary", headers={**LEA, "Accept": "application/pdf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF") and r.headers["cache-control"] == "no-store"
    text, _ = pdf_text(r.content)
    for title in ["Synthèse médicale", *TITLES]:
        assert title in text, title
    for fact in ("Léa Lefèvre", "12/04/1990", "290049912345678", "Pénicilline", "Ventoline 100 µg", "Asthme",
                 "62 kg", "Hélène Dupré", "Zoé Lefèvre — sœur", "Mes directives anticipées signées"):  # fmt: skip
        assert fact in text, fact
    assert "60 kg" not in text and "Diabète" not in text
    # the same content for a professional: not the masked document, and JSON wins when Accept prefers it
    r = await client.get("/Patient/lea/$summary?_format=pdf", headers=ps_token("med", **LONG))
    text, _ = pdf_text(r.content)
    assert "Pénicilline" in text and "Mes directives anticipées" not in text
    prefers_json = {**LEA, "Accept": "application/pdf;q=0.5, application/fhir+json"}
    r = await client.get("/Patient/lea/$summary", headers=prefers_json)
    assert r.headers["content-type"].startswith("application/fhir+json")


async def test_bris_de_glace_pdf_says_what_is_not_accessible(client):
    h = ps_token("stranger", codes.BRIS_DE_GLACE, justification="urgence", **LONG)
    r = await client.get("/Patient/lea/$summary?_format=application/pdf", headers=h)
    text, _ = pdf_text(r.content)
    assert "Non accessible avec les droits d'accès utilisés." in text and "Pénicilline" not in text
    assert "DTP" in text and "Asthme" in text


@pytest.fixture
async def sqlite_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with summary_server(f"sqlite:///{tmp_path / 'fhir.db'}") as c:
        yield c


async def test_a_long_list_spans_pages(sqlite_client):
    """The PDF's layout does not depend on the store (the sections are read as in the other tests, on both):
    SQLite only, to keep the suite short."""
    client = sqlite_client
    vaccines = [{"resource": {"resourceType": "Immunization", "status": "completed", "patient": LEA_REF,
                              "vaccineCode": {"text": f"Vaccin n°{n:03d} (rappel, entre deux âges)"},
                              "occurrenceDateTime": f"20{n % 25:02d}-01-01"},
                 "request": {"method": "POST", "url": "Immunization"}} for n in range(200)]  # fmt: skip
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": vaccines}
    r = await client.post("/", json=transaction, headers=SYSTEM)
    assert r.status_code == 200, r.text
    r = await client.get("/Patient/lea/$summary?_format=pdf", headers=LEA)
    text, pages = pdf_text(r.content)
    assert len(pages) >= 4
    assert all(f"Vaccin n°{n:03d}" in text for n in range(200))
    first = next(i for i, p in enumerate(pages) if "Vaccin n°" in p)
    last = max(i for i, p in enumerate(pages) if "Vaccin n°" in p)
    assert last - first >= 2 and "Entourage" in pages[-1] and f"/{len(pages)}" in pages[-1]
    assert len(section_refs(await summary(client, LEA), "Vaccinations")) == 201


async def test_the_audit_trail_names_the_patient_after_a_pdf_summary(client):
    r = await client.get("/Patient/lea/$summary?_format=pdf", headers=ps_token("med", **LONG))
    assert r.status_code == 200
    found = await client.get("/AuditEvent?patient=lea&_count=100", headers=SYSTEM)
    events = [e["resource"] for e in found.json().get("entry", ())]
    operations = [e for e in events if e["subtype"][0]["code"] == "operation"]
    assert len(operations) == 1, events
    shown = {x["what"]["reference"] for x in operations[0]["entity"] if "what" in x}
    assert "Patient/lea" in shown and any(ref.startswith("Patient/lea/_history/") for ref in shown)
    assert any(ref.startswith("AllergyIntolerance/lea-allergy/_history/") for ref in shown)
    assert not any("lea-ad-doc" in ref for ref in shown)  # only what the answer showed

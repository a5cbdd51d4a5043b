"""The patient's own documents (issue 13), on both stores: uploads (ITI-65 transaction, ITI-105 inline) with the
format sniffed from the bytes, the size limit, the DMP type and class, the author; folders and $move; read marks;
the default confidentiality; links to a hospitalisation; a professional's replacement. And what each caller may not
do: a professional files or marks nothing for the patient, another patient sees nothing, a read-only app uploads
nothing. docs/medical-record.md, "The patient's own documents"."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import FHIR_BASE
from test_access_control import StandInVerifier, token
from test_policy import A05, LOINC, consent, directory, ps_token, record

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.policy import codes
from fhir_server.record import documents, folders

LONG = {"exp": int(time.time()) + 24 * 3600}  # minted at import: valid however long the suite runs
LEA = token("patient/*.cruds", client_id="mes-app", sub="lea-sub", fhirUser="Patient/lea", patient="lea", **LONG)
MAX = token("patient/*.cruds", client_id="mes-app", sub="max-sub", fhirUser="Patient/max", patient="max", **LONG)
MUM = token("user/*.cruds", client_id="mes-app", sub="mum-sub", fhirUser="RelatedPerson/mum",
            managed_patients=["lea"], **LONG)  # fmt: skip
READER = token("patient/*.rs", client_id="reader-app", sub="lea-sub", patient="lea", **LONG)
MED = ps_token("med", **LONG)
GP = ps_token("gp", **LONG)

PDF = b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(17)
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + bytes(48)  # a Windows executable's header
OWN_TYPE = (A05, "EXPPAT_2")  # Autre document du patient, class 90
CLASS_SYSTEM = documents.TRE_A03_SYSTEMS[0]
READ_TAG = f"{documents.READ_STATE}|{documents.READ}"
FOLDER_CODE = {"coding": [{"system": folders.MHD_LIST_TYPES, "code": folders.FOLDER}]}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def own_document(*, patient: str = "lea", author: str = "Patient/lea", content_type: str = "application/pdf",
                 data: bytes | None = PDF, url: str | None = None, type_: tuple[str, str] = OWN_TYPE,
                 class_: str | None = "90") -> dict:  # fmt: skip
    attachment: dict = {"contentType": content_type, "title": "ordonnance.pdf"}
    if data is not None:
        attachment["data"] = b64(data)
    if url is not None:
        attachment["url"] = url
    doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{patient}"},
           "type": {"coding": [{"system": type_[0], "code": type_[1]}]}, "author": [{"reference": author}],
           "content": [{"attachment": attachment}]}  # fmt: skip
    if class_ is not None:
        doc["category"] = [{"coding": [{"system": CLASS_SYSTEM, "code": class_}]}]
    return doc


def upload_bundle(data: bytes, content_type: str = "application/pdf", declared: str | None = None) -> dict:
    """ITI-65 shape (its order: the DocumentReference, then the Binary whose securityContext it is), linked by
    urn:uuid."""
    doc = own_document(content_type=declared or content_type, data=None, url="urn:uuid:b1")
    binary = {"resourceType": "Binary", "contentType": content_type, "data": b64(data),
              "securityContext": {"reference": "urn:uuid:d1"}}  # fmt: skip
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:d1", "resource": doc, "request": {"method": "POST", "url": "DocumentReference"}},
        {"fullUrl": "urn:uuid:b1", "resource": binary, "request": {"method": "POST", "url": "Binary"}},
    ]}  # fmt: skip


def encounter(id_: str, patient: str, class_code: str) -> dict:
    return {"resourceType": "Encounter", "id": id_, "status": "finished",
            "subject": {"reference": f"Patient/{patient}"},
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class_code}}  # fmt: skip


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        seed = [*directory(), *record(), encounter("lea-hosp", "lea", "IMP"), encounter("lea-visit", "lea", "AMB"),
                encounter("max-hosp", "max", "IMP")]  # fmt: skip
        for resource in seed:
            r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        app.state.auth = StandInVerifier()
        yield c


async def ids(client: httpx.AsyncClient, query: str, headers: dict) -> set[str]:
    r = await client.get(query, headers=headers)
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", ()) if e.get("search", {}).get("mode") != "outcome"}


async def post_own(client: httpx.AsyncClient, headers: dict = LEA, **kwargs) -> httpx.Response:
    return await client.post("/DocumentReference", json=own_document(**kwargs), headers=headers)


def diagnostics(r: httpx.Response) -> str:
    assert r.json()["resourceType"] == "OperationOutcome", r.text
    return " ".join(i.get("diagnostics", "") for i in r.json()["issue"])


# --- upload ----------------------------------------------------------------------------------------------------------
async def test_the_patient_uploads_by_transaction_and_by_simplified_publish(client):
    r = await client.post("/", json=upload_bundle(PDF), headers=LEA)
    assert r.status_code == 200, r.text
    doc_at, binary_at = (e["response"]["location"].split("/_history")[0] for e in r.json()["entry"])
    doc = (await client.get(f"/{doc_at}", headers=LEA)).json()
    assert doc["content"][0]["attachment"]["url"] == binary_at and doc["author"] == [{"reference": "Patient/lea"}]
    binary = await client.get(f"/{binary_at}", headers={**LEA, "Accept": "application/fhir+json"})
    assert base64.b64decode(binary.json()["data"]) == PDF
    # ITI-105: the bytes inline, POSTed alone
    r = await post_own(client, content_type="image/png", data=PNG)
    assert r.status_code == 201, r.text
    # a representative deposits as themselves, for the patient
    r = await post_own(client, MUM, author="RelatedPerson/mum")
    assert r.status_code == 201, r.text


async def test_the_format_is_read_from_the_bytes(client):
    before = await ids(client, "/DocumentReference?subject=Patient/lea", LEA)
    r = await post_own(client, content_type="image/png", data=PDF)  # a PDF renamed .png: refused, named
    assert r.status_code == 422 and "application/pdf" in diagnostics(r) and "image/png" in diagnostics(r)
    r = await post_own(client, content_type="application/pdf", data=EXE)  # an executable dressed as a PDF
    assert r.status_code == 422 and "none of them" in diagnostics(r)
    r = await client.post("/", json=upload_bundle(EXE, "application/pdf"), headers=LEA)
    assert r.status_code == 422 and "none of them" in diagnostics(r)
    r = await client.post("/", json=upload_bundle(PDF, declared="image/jpeg"), headers=LEA)  # doc ≠ Binary
    assert r.status_code == 422, r.text
    bad = own_document()
    bad["content"][0]["attachment"]["data"] = "not base64!"
    r = await client.post("/DocumentReference", json=bad, headers=LEA)
    assert r.status_code in (400, 422), r.text
    no_bytes = own_document(data=None, url="https://example.org/x.pdf")
    r = await client.post("/DocumentReference", json=no_bytes, headers=LEA)
    assert r.status_code == 422 and "carries its bytes" in diagnostics(r)
    # nothing of a refused transaction is left
    assert await ids(client, "/DocumentReference?subject=Patient/lea", LEA) == before
    assert sniff_cases() == ["application/pdf", "image/jpeg", "image/png", None]


def sniff_cases() -> list[str | None]:
    return [documents.sniff(d) for d in (PDF, b"\xff\xd8\xff\xe0\x00\x10JFIF", PNG, EXE)]


async def test_a_document_over_the_limit_gets_a_clear_413(client, monkeypatch):
    monkeypatch.setenv("FHIR_SERVER_PATIENT_DOCUMENT_MAX_BYTES", "1024")
    documents.max_bytes.cache_clear()
    try:
        big = PDF + bytes(2048)
        r = await post_own(client, data=big)
        assert r.status_code == 413 and "at most 1024 bytes" in diagnostics(r)
        assert r.json()["issue"][0]["code"] == "too-costly"
        r = await client.post("/", json=upload_bundle(big), headers=LEA)
        assert r.status_code == 413, r.text
        assert (await post_own(client, data=PDF)).status_code == 201  # under the limit
    finally:
        documents.max_bytes.cache_clear()


async def test_type_and_class_come_from_the_dmp_lists(client):
    r = await post_own(client, type_=(LOINC, "18842-5"))  # a LOINC discharge summary the DMP does not list
    assert r.status_code == 422 and "JDV_J07" in diagnostics(r)
    r = await post_own(client, class_="10")  # EXPPAT_2 is of class 90
    assert r.status_code == 422 and "TRE_A03 90" in diagnostics(r)
    r = await post_own(client, class_=None)
    assert r.status_code == 422, r.text
    r = await post_own(client, type_=(LOINC, "28617-9"), class_="10")  # listed, but ASS_X16 gives it no class
    assert r.status_code == 422 and "no DMP class" in diagnostics(r)
    r = await post_own(client, type_=(LOINC, "11488-4"), class_="10")  # a CR the patient was handed on paper
    assert r.status_code == 201, r.text


async def test_the_author_is_the_patient_or_the_representative_acting(client):
    for author in ("PractitionerRole/r-med", "Patient/max", "RelatedPerson/mum"):
        r = await post_own(client, author=author)
        assert r.status_code == 422 and "authored by the patient" in diagnostics(r), author
    r = await post_own(client, MUM, author="Patient/lea")  # the representative may name the patient
    assert r.status_code == 201, r.text
    # the patient cannot deposit into someone else's record, nor a read-only app into theirs
    assert (await post_own(client, patient="max", author="Patient/max")).status_code == 403
    assert (await post_own(client, READER)).status_code == 403
    assert (await client.post("/", json=upload_bundle(PDF), headers=READER)).status_code == 403


# --- folders -------------------------------------------------------------------------------------------------------
def folder(title: str, *docs: str, patient: str = "lea") -> dict:
    out = {"resourceType": "List", "status": "current", "mode": "working", "title": title, "code": FOLDER_CODE,
           "subject": {"reference": f"Patient/{patient}"}}  # fmt: skip
    if docs:
        out["entry"] = [{"item": {"reference": f"DocumentReference/{d}"}} for d in docs]
    return out


async def test_folders_hold_each_document_once_and_move_it(client):
    mine = (await post_own(client)).json()["id"]
    r = await client.post("/List", json=folder("Examens", mine, "lea-cr"), headers=LEA)
    assert r.status_code == 201, r.text
    exams = r.json()["id"]
    renamed = {**r.json(), "title": "Examens 2026"}
    r = await client.put(f"/List/{exams}", json=renamed, headers=LEA)
    assert r.status_code == 200 and r.json()["title"] == "Examens 2026"
    r = await client.post("/List", json=folder("Doublon", "lea-cr"), headers=LEA)
    assert r.status_code == 422 and "one folder at most" in diagnostics(r)
    r = await client.post("/List", json=folder("Intrus", "max-cr"), headers=LEA)  # another patient's document
    assert r.status_code == 422, r.text
    r = await client.post("/List", json=folder("Ordonnances"), headers=LEA)
    presc = r.json()["id"]
    move = {
        "resourceType": "Parameters",
        "parameter": [{"name": "folder", "valueReference": {"reference": f"List/{presc}"}}],
    }
    r = await client.post("/DocumentReference/lea-cr/$move", json=move, headers=LEA)
    assert r.status_code == 200, r.text
    item = "DocumentReference/lea-cr"
    assert await ids(client, f"/List?item={item}", LEA) == {presc}
    assert await ids(client, f"/List?code={folders.MHD_LIST_TYPES}|folder&subject=Patient/lea", LEA) == {exams, presc}
    out = {"resourceType": "Parameters", "parameter": []}
    r = await client.post("/DocumentReference/lea-cr/$move", json=out, headers=LEA)
    assert r.status_code == 200 and await ids(client, f"/List?item={item}", LEA) == set()
    # a professional files nothing for the patient; another patient sees none of her folders
    assert (await client.post("/List", json=folder("PS", "lea-psy"), headers=MED)).status_code == 403
    assert (await client.put(f"/List/{exams}", json=renamed, headers=MED)).status_code == 403
    assert (await client.delete(f"/List/{exams}", headers=MED)).status_code == 403
    assert (await client.post("/DocumentReference/lea-cr/$move", json=move, headers=MED)).status_code == 403
    assert exams in await ids(client, "/List?subject=Patient/lea", MED)  # record data: an authorised PS reads it
    assert await ids(client, "/List?subject=Patient/lea", MAX) == set()
    assert (await client.get(f"/List/{exams}", headers=MAX)).status_code == 404
    assert (await client.post("/DocumentReference/lea-cr/$move", json=move, headers=MAX)).status_code == 404


# --- read marks ----------------------------------------------------------------------------------------------------
async def test_read_marks_are_the_patients_and_change_no_content(client):
    r = await client.post("/DocumentReference/lea-cr/$mark-read", headers=LEA)
    assert r.status_code == 200, r.text
    doc = (await client.get("/DocumentReference/lea-cr", headers=LEA)).json()
    assert doc["meta"]["versionId"] == "1" and documents.is_read(doc)
    history = (await client.get("/DocumentReference/lea-cr/_history", headers=LEA)).json()
    assert history["total"] == 1  # no new version: nothing for professionals, no "document updated" event
    assert await ids(client, f"/DocumentReference?subject=Patient/lea&_tag={READ_TAG}", LEA) == {"lea-cr"}
    assert "lea-cr" not in await ids(client, f"/DocumentReference?subject=Patient/lea&_tag:not={READ_TAG}", LEA)
    r = await client.post("/DocumentReference/lea-cr/$mark-unread", headers=LEA)
    assert r.status_code == 200 and not documents.is_read(
        (await client.get("/DocumentReference/lea-cr", headers=LEA)).json()
    )
    # not a professional (even the author), not another patient, not an app that may only read
    assert (await client.post("/DocumentReference/lea-cr/$mark-read", headers=MED)).status_code == 403
    assert (await client.post("/DocumentReference/lea-cr/$mark-read", headers=MAX)).status_code == 404
    assert (await client.post("/DocumentReference/lea-cr/$mark-read", headers=READER)).status_code == 403
    tag = {"system": documents.READ_STATE, "code": documents.READ}
    meta = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [tag]}}]}
    for path in ("$meta-add", "_history/1/$meta-add", "$meta-delete"):
        assert (await client.post(f"/DocumentReference/lea-cr/{path}", json=meta, headers=MED)).status_code == 403
    assert (await client.post("/DocumentReference/lea-cr/$meta-add", json=meta, headers=LEA)).status_code == 200
    other = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"code": "x"}]}}]}
    assert (await client.post("/DocumentReference/lea-cr/$meta-add", json=other, headers=MED)).status_code == 200
    doc["meta"]["tag"] = [tag]
    assert (await client.post("/DocumentReference/lea-cr/$mark-unread", headers=LEA)).status_code == 200
    r = await client.put("/DocumentReference/lea-cr", json=doc, headers=MED)
    assert r.status_code == 403 and "$mark-read" in diagnostics(r)


# --- default confidentiality, hospitalisations -------------------------------------------------------------------
async def test_the_patients_default_confidentiality_masks_what_they_deposit(client):
    visible = (await post_own(client, type_=(LOINC, "11488-4"), class_="10")).json()["id"]
    mask_all = consent("lea-mask-new", "lea", "deny", label=codes.MASQUE_PS)
    assert (await client.put("/Consent/lea-mask-new", json=mask_all, headers=LEA)).status_code == 201
    masked = (await post_own(client, type_=(LOINC, "11488-4"), class_="10")).json()
    assert {c["code"] for label in masked["securityLabel"] for c in label["coding"]} == {codes.MASQUE_PS}
    seen_by_med = await ids(client, "/DocumentReference?subject=Patient/lea", MED)
    assert visible in seen_by_med and masked["id"] not in seen_by_med
    assert masked["id"] in await ids(client, "/DocumentReference?subject=Patient/lea", GP)  # médecin traitant
    assert masked["id"] in await ids(client, "/DocumentReference?subject=Patient/lea", LEA)


async def test_a_document_links_to_a_hospitalisation_of_the_same_patient(client):
    linked = own_document()
    linked["context"] = {"encounter": [{"reference": "Encounter/lea-hosp"}]}
    r = await client.post("/DocumentReference", json=linked, headers=LEA)
    assert r.status_code == 201, r.text
    assert r.json()["id"] in await ids(client, "/DocumentReference?encounter=Encounter/lea-hosp", LEA)
    answers = set()
    for other in ("lea-visit", "max-hosp", "nope"):  # not inpatient, another patient's, none: told alike
        linked["context"] = {"encounter": [{"reference": f"Encounter/{other}"}]}
        r = await client.post("/DocumentReference", json=linked, headers=LEA)
        assert r.status_code == 422, r.text
        answers.add(diagnostics(r))
    assert len(answers) == 1 and "class IMP" in answers.pop()


# --- replacements --------------------------------------------------------------------------------------------------
async def test_a_replaced_document_shows_the_current_one_and_keeps_the_history(client):
    old = (await client.get("/DocumentReference/lea-cr", headers=MED)).json()
    new = {**old, "id": None, "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.lea-cr.2"}],
           "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/lea-cr"}}]}  # fmt: skip
    new.pop("id"), new.pop("meta")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [  # ITI-65: the new one, the old superseded
        {"fullUrl": "urn:uuid:n1", "resource": new, "request": {"method": "POST", "url": "DocumentReference"}},
        {"resource": {**old, "status": "superseded"}, "request": {"method": "PUT", "url": "DocumentReference/lea-cr"}},
    ]}  # fmt: skip
    r = await client.post("/", json=bundle, headers=MED)
    assert r.status_code == 200, r.text
    new_id = r.json()["entry"][0]["response"]["location"].split("/")[1]
    current = await ids(client, "/DocumentReference?subject=Patient/lea&status=current", LEA)
    assert new_id in current and "lea-cr" not in current
    assert await ids(client, "/DocumentReference?relatesto=DocumentReference/lea-cr", LEA) == {new_id}
    superseded = await client.get("/DocumentReference/lea-cr", headers=LEA)
    assert superseded.status_code == 200 and superseded.json()["status"] == "superseded"
    history = (await client.get("/DocumentReference/lea-cr/_history", headers=LEA)).json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["superseded", "current"]
    assert (await client.get("/DocumentReference/lea-cr/_history/1", headers=LEA)).json()["status"] == "current"
    # the patient cannot supersede a professional's document
    r = await client.put(
        "/DocumentReference/lea-psy", json={**old, "id": "lea-psy", "status": "superseded"}, headers=LEA
    )
    assert r.status_code == 403

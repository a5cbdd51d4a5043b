"""batch and transaction Bundles (http://hl7.org/fhir/R4/http.html#transaction), on both stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fhir_client

INS = "urn:oid:1.2.250.1.213.1.4.8"
ANS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ans-examples" / "pdsm4dmp"


@pytest.fixture
async def client(store_url):
    async with fhir_client(store_url, max_bundle_entries=50) as c:
        yield c


def tx(*entries, kind="transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(full_url: str | None, resource: dict, **request) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def patient(ins: str = "1800112345678", family: str = "Martin") -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": INS, "value": ins}], "name": [{"family": family}]}


def observation(subject: str, value: float = 120) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "PAS"},
            "subject": {"reference": subject}, "valueQuantity": {"value": value}}  # fmt: skip


async def total(client, path: str = "/_history") -> int:
    return (await client.get(path)).json()["total"]


async def test_transaction_assigns_ids_and_rewrites_references(client):
    pid, oid = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059"
    r = await client.post("/", json=tx(post(oid, observation(pid)), post(pid, patient())))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created"]
    obs_location, pat_location = (e["response"]["location"] for e in answer["entry"])
    assert obs_location.startswith("Observation/") and pat_location.startswith("Patient/")
    assert answer["entry"][0]["response"]["etag"] == 'W/"1"'
    observation_read = (await client.get("/" + obs_location.split("/_history")[0])).json()
    assert observation_read["subject"]["reference"] == pat_location.split("/_history")[0]


async def test_transaction_is_all_or_nothing(client):
    await client.put("/Patient/p1", json={**patient(), "id": "p1"})
    before = await total(client)
    failing = {"resource": {**patient(), "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1",
                                                                  "ifMatch": 'W/"9"'}}  # fmt: skip
    r = await client.post(
        "/", json=tx(post("urn:uuid:a", patient("1")), post(None, observation("urn:uuid:a")), failing)
    )
    assert r.status_code == 412, r.text
    assert "Bundle.entry[2]" in r.text
    assert await total(client) == before  # nothing written, no index entry left
    assert (await client.get("/Patient?identifier=1")).json()["total"] == 0
    invalid = post(None, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "issued": "x"})
    r = await client.post("/", json=tx(post(None, patient("2")), invalid))
    assert r.status_code == 400 and "Bundle.entry[1].resource" in r.text
    assert await total(client) == before


async def test_conditional_references_by_ins(client):
    await client.post("/Patient", json=patient("2830512345678"))
    ref = f"Patient?identifier={INS}|2830512345678"
    r = await client.post("/", json=tx(post(None, observation(ref))))
    assert r.status_code == 200, r.text
    location = r.json()["entry"][0]["response"]["location"].split("/_history")[0]
    subject = (await client.get("/" + location)).json()["subject"]["reference"]
    assert subject.startswith("Patient/") and "?" not in subject
    none = await client.post("/", json=tx(post(None, observation(f"Patient?identifier={INS}|0000"))))
    assert none.status_code == 404 and "matches nothing" in none.text
    await client.post("/Patient", json=patient("2830512345678"))
    several = await client.post("/", json=tx(post(None, observation(ref))))
    assert several.status_code == 412 and "several" in several.text


async def test_if_none_exist_inside_a_transaction(client):
    existing = (await client.post("/Patient", json=patient("42"))).json()["id"]
    r = await client.post("/", json=tx(
        post("urn:uuid:p", patient("42"), ifNoneExist=f"identifier={INS}|42"),
        post(None, observation("urn:uuid:p")),
    ))  # fmt: skip
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK", "201 Created"]
    obs = r.json()["entry"][1]["response"]["location"].split("/_history")[0]
    assert (await client.get("/" + obs)).json()["subject"]["reference"] == f"Patient/{existing}"
    assert (await client.get("/Patient?identifier=42")).json()["total"] == 1


async def test_processing_order_and_get_entries(client):
    await client.put("/Patient/old", json={**patient("9"), "id": "old"})
    r = await client.post("/", json=tx(
        {"request": {"method": "GET", "url": "Patient?identifier=7"}},
        post(None, patient("7")),
        {"request": {"method": "DELETE", "url": "Patient/old"}},
        {"request": {"method": "GET", "url": "Patient/old"}},
    ))  # fmt: skip
    assert r.status_code == 410  # GET of a resource the same transaction deletes fails it (GETs run last)
    assert (await client.get("/Patient/old")).status_code == 200  # ... and nothing was written
    r = await client.post("/", json=tx(
        {"request": {"method": "GET", "url": "Patient?identifier=7"}},
        post(None, patient("7")),
        {"request": {"method": "DELETE", "url": "Patient/old"}},
    ))  # fmt: skip
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["resource"]["type"] == "searchset" and entries[0]["resource"]["total"] == 1
    assert entries[2]["response"]["status"] == "204 No Content"


async def test_batch_entries_fail_alone(client):
    r = await client.post("/", json=tx(
        post(None, patient("1")),
        post(None, {"resourceType": "Patient", "birthDate": "not-a-date"}),
        {"request": {"method": "GET", "url": "Patient/unknown"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=1"}},
        kind="batch",
    ))  # fmt: skip
    assert r.status_code == 200
    answer = r.json()
    assert answer["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created", "400 Bad Request", "404 Not Found", "204 No Content"]
    assert answer["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


async def test_bundle_limits_and_shape(client):
    too_many = tx(*(post(None, patient(str(i))) for i in range(51)))
    assert (await client.post("/", json=too_many)).status_code == 413
    assert (await client.post("/", json={"resourceType": "Bundle", "type": "collection"})).status_code == 400
    assert (await client.post("/", json=tx({"request": {"method": "POST", "url": "Nope"}}))).status_code == 400
    dup = tx(*({"resource": {**patient(), "id": "x"}, "request": {"method": "PUT", "url": "Patient/x"}},) * 2)
    assert (await client.post("/", json=dup)).status_code == 400
    assert await total(client) == 0


async def test_binary_attachment_urls_are_rewritten(client):
    doc = {"resourceType": "DocumentReference", "status": "current",
           "content": [{"attachment": {"contentType": "application/pdf", "url": "urn:uuid:bin"}}]}  # fmt: skip
    binary = {"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0xLjQK"}
    r = await client.post("/", json=tx(post("urn:uuid:doc", doc), post("urn:uuid:bin", binary)))
    assert r.status_code == 200, r.text
    doc_location = r.json()["entry"][0]["response"]["location"].split("/_history")[0]
    bin_location = r.json()["entry"][1]["response"]["location"].split("/_history")[0]
    url = (await client.get("/" + doc_location)).json()["content"][0]["attachment"]["url"]
    assert url == bin_location


@pytest.mark.skipif(not ANS.exists(), reason="ANS examples not found beside the checkout")
async def test_ans_iti65_submission(client):
    submission = json.loads((ANS / "Bundle-example-td2-iti65-lot-soumission.json").read_text())
    refused = await client.post("/", json=submission)
    assert refused.status_code == 404 and "Patient?identifier" in refused.text
    assert await total(client) == 0
    await client.post("/Patient", json=patient("123456789012345"))
    accepted = await client.post("/", json=submission)
    assert accepted.status_code == 200, accepted.text
    assert all(e["response"]["status"] == "201 Created" for e in accepted.json()["entry"])
    docs = (await client.get("/DocumentReference?patient.identifier=" + INS + "|123456789012345")).json()
    assert docs["total"] == 1


@pytest.mark.skipif(not ANS.exists(), reason="ANS examples not found beside the checkout")
async def test_ans_replacement_with_a_fhirpath_patch(client):
    await client.post("/Patient", json=patient("123456789012345"))
    original = json.loads((ANS / "DocumentReference-doc-x-id.json").read_text())
    original["subject"] = {"reference": f"Patient?identifier={INS}|123456789012345"}
    put = {"resource": original, "request": {"method": "PUT", "url": "DocumentReference/doc-x-id"}}
    seeded = await client.post("/", json=tx(put))
    assert seeded.status_code == 200, seeded.text
    replacement = json.loads((ANS / "Bundle-example-td2-1-remplacement.json").read_text())
    r = await client.post("/", json=replacement)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses.count("201 Created") == 3 and "200 OK" in statuses
    replaced = (await client.get("/DocumentReference/doc-x-id")).json()
    assert replaced["meta"]["versionId"] == "2"

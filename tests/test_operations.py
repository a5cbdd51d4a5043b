"""$validate, $meta / $meta-add / $meta-delete and Patient/$everything, on both stores."""

from __future__ import annotations

import pytest
from conftest import fhir_client

TAG = {"system": "http://example.org/tags", "code": "dmp"}
CONFIDENTIAL = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}


@pytest.fixture
async def client(store_url):
    async with fhir_client(store_url, default_page_size=4) as c:
        yield c


def params(**parts) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": k, **v} for k, v in parts.items()]}


async def test_validate(client):
    ok = await client.post("/Patient/$validate", json={"resourceType": "Patient", "gender": "female"})
    assert ok.status_code == 200 and ok.json()["issue"][0]["severity"] == "information"
    bad = await client.post("/Patient/$validate", json={"resourceType": "Patient", "birthDate": "1980-13-01"})
    assert bad.status_code == 200
    assert bad.json()["issue"][0]["severity"] == "error" and "Patient.birthDate" in str(bad.json())
    wrapped = params(resource={"resource": {"resourceType": "Patient"}}, mode={"valueCode": "create"})
    assert (await client.post("/Patient/$validate", json=wrapped)).json()["issue"][0]["severity"] == "information"
    await client.put("/Patient/p", json={"resourceType": "Patient", "id": "p"})
    mismatch = await client.post("/Patient/p/$validate?mode=update", json={"resourceType": "Patient", "id": "q"})
    assert mismatch.json()["issue"][0]["severity"] == "error"
    delete = await client.post("/Patient/p/$validate", json=params(mode={"valueCode": "delete"}))
    assert delete.status_code == 200
    assert (await client.post("/Patient/nope/$validate", json=params(mode={"valueCode": "delete"}))).status_code == 404
    assert (await client.post("/Patient/$validate?mode=update", json={"resourceType": "Patient"})).status_code == 400
    profiled = params(resource={"resource": {"resourceType": "Patient"}}, profile={"valueUri": "http://x/y"})
    assert (await client.post("/Patient/$validate", json=profiled)).status_code == 400
    assert (await client.get("/_history")).json()["total"] == 1  # $validate writes nothing


async def test_meta_add_and_delete_keep_the_version(client):
    await client.put("/Patient/p", json={"resourceType": "Patient", "id": "p", "meta": {"tag": [TAG]}})
    meta = (await client.get("/Patient/p/$meta")).json()
    assert meta["parameter"][0]["valueMeta"]["tag"] == [TAG]
    added = await client.post("/Patient/p/$meta-add", json=params(meta={"valueMeta": {"security": [CONFIDENTIAL],
                                                                                      "tag": [TAG]}}))  # fmt: skip
    assert added.status_code == 200
    value = added.json()["parameter"][0]["valueMeta"]
    assert value["security"] == [CONFIDENTIAL] and value["tag"] == [TAG] and value["versionId"] == "1"
    read = (await client.get("/Patient/p")).json()
    assert read["meta"]["versionId"] == "1" and read["meta"]["security"] == [CONFIDENTIAL]
    assert (await client.get("/Patient/p/_history")).json()["total"] == 1  # no new version
    found = await client.get("/Patient?_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R")
    assert found.json()["total"] == 1  # index entries follow
    removed = await client.post("/Patient/p/$meta-delete", json=params(meta={"valueMeta": {"tag": [TAG]}}))
    assert "tag" not in removed.json()["parameter"][0]["valueMeta"]
    assert (await client.get("/Patient?_tag=http://example.org/tags|dmp")).json()["total"] == 0
    await client.put("/Patient/p", json={"resourceType": "Patient", "id": "p"})
    old = await client.post("/Patient/p/_history/1/$meta-add", json=params(meta={"valueMeta": {"tag": [TAG]}}))
    assert old.status_code == 200
    assert (await client.get("/Patient/p/_history/1")).json()["meta"]["tag"] == [TAG]
    assert "tag" not in (await client.get("/Patient/p")).json()["meta"]
    assert (await client.post("/Patient/p/$meta-add", json={"resourceType": "Patient"})).status_code == 400
    assert (await client.get("/Patient/zz/$meta")).status_code == 404


async def test_everything(client):
    await client.put("/Patient/p", json={"resourceType": "Patient", "id": "p",
                                         "generalPractitioner": [{"reference": "Practitioner/dr"}]})  # fmt: skip
    await client.put("/Practitioner/dr", json={"resourceType": "Practitioner", "id": "dr"})
    await client.put("/Patient/other", json={"resourceType": "Patient", "id": "other"})
    for i in range(5):
        obs = {"resourceType": "Observation", "id": f"o{i}", "status": "final", "code": {"text": "x"},
               "subject": {"reference": "Patient/p"}, "performer": [{"reference": "Practitioner/dr"}]}  # fmt: skip
        await client.put(f"/Observation/o{i}", json=obs)
    other = {"resourceType": "Observation", "id": "x", "status": "final", "code": {"text": "x"},
             "subject": {"reference": "Patient/other"}}  # fmt: skip
    await client.put("/Observation/x", json=other)
    await client.put("/AllergyIntolerance/a", json={"resourceType": "AllergyIntolerance", "id": "a",
                                                    "patient": {"reference": "Patient/p"}})  # fmt: skip
    seen, included, url = [], set(), "/Patient/p/$everything"
    while url:
        page = (await client.get(url)).json()
        seen += [(e["resource"]["resourceType"], e["resource"]["id"]) for e in page["entry"]
                 if e["search"]["mode"] == "match"]  # fmt: skip
        included |= {e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "include"}
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = nxt[0].removeprefix("http://fhir.test") if nxt else None
    assert seen[0] == ("Patient", "p")
    assert sorted(seen[1:]) == [("AllergyIntolerance", "a"), *(("Observation", f"o{i}") for i in range(5))]
    assert included == {"dr"}
    only = (await client.get("/Patient/p/$everything?_type=AllergyIntolerance&_count=10")).json()
    assert [e["resource"]["id"] for e in only["entry"]] == ["a"]
    assert (await client.get("/Patient/nope/$everything")).status_code == 404
    assert (await client.get("/Patient/p/$everything?_sort=x")).status_code == 400

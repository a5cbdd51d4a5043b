"""The FHIR REST interactions over HTTP (http://hl7.org/fhir/R4/http.html), on both stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import fhir_client

from fhir_server.validation import validate_resource

FHIR = "application/fhir+json"
BODY_LIMIT = 64 * 1024


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with fhir_client(store_url, max_body_bytes=BODY_LIMIT, default_page_size=10) as c:
        yield c


def patient(**extra) -> dict:
    return {"resourceType": "Patient", "name": [{"family": "Dupont", "given": ["Hélène"]}], **extra}


async def post(client: httpx.AsyncClient, body: dict, **headers) -> httpx.Response:
    return await client.post(f"/{body['resourceType']}", json=body, headers={"Content-Type": FHIR, **headers})


def assert_outcome(response: httpx.Response, status: int, text: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] and outcome["issue"][0]["severity"] == "error"
    if text:
        assert text in str(outcome), outcome
    return outcome


# --- capabilities -------------------------------------------------------------------------------


async def test_metadata_is_a_capability_statement(client):
    r = await client.get("/metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    resources = {res["type"]: res for res in cs["rest"][0]["resource"]}
    assert len(resources) == 146
    codes = {i["code"] for i in resources["Patient"]["interaction"]}
    assert {"read", "vread", "update", "delete", "create", "history-instance", "history-type"} <= codes
    assert resources["Patient"]["conditionalDelete"] == "multiple"
    names = {p["name"] for p in resources["Patient"]["searchParam"]}
    assert {"_id", "_lastUpdated", "identifier", "family", "birthdate", "general-practitioner"} <= names
    assert {"code": "history-system"} in cs["rest"][0]["interaction"]
    assert {"code": "search-system"} in cs["rest"][0]["interaction"]
    assert {"_type", "_list", "_lastUpdated"} <= {p["name"] for p in cs["rest"][0]["searchParam"]}
    assert "Observation:subject" in resources["Observation"]["searchInclude"]
    assert "Observation:subject" in resources["Patient"]["searchRevInclude"]
    assert "_filter" in {p["name"] for p in cs["rest"][0]["searchParam"]}  # for every type: rest level only
    assert "_filter" not in {p["name"] for p in resources["Patient"]["searchParam"]}
    validate_resource(cs)  # the statement is itself valid FHIR


# --- create / read / vread ----------------------------------------------------------------------


async def test_create_then_read(client):
    r = await post(client, patient(id="ignored"))
    assert r.status_code == 201
    created = r.json()
    assert created["id"] != "ignored"
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["lastUpdated"].endswith("Z")
    assert r.headers["etag"] == 'W/"1"'
    assert "GMT" in r.headers["last-modified"]
    assert r.headers["location"] == f"http://fhir.test/Patient/{created['id']}/_history/1"

    read = await client.get(f"/Patient/{created['id']}")
    assert read.status_code == 200
    assert read.content == r.content  # the stored bytes, as created
    assert read.headers["etag"] == 'W/"1"'
    assert read.headers["content-type"] == f"{FHIR}; charset=utf-8"
    assert read.json()["name"][0]["given"] == ["Hélène"]

    vread = await client.get(f"/Patient/{created['id']}/_history/1")
    assert vread.status_code == 200 and vread.content == r.content


async def test_prefer_return(client):
    minimal = await post(client, patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"]
    oo = await post(client, patient(), Prefer="return=OperationOutcome")
    assert oo.status_code == 201 and oo.json()["resourceType"] == "OperationOutcome"


async def test_decimal_precision_is_kept(client):
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "glycémie"},
        "valueQuantity": {"value": 1.50, "unit": "g/L"},
    }
    raw = b'{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}'
    r = await client.post("/Observation", content=raw, headers={"Content-Type": FHIR})
    assert r.status_code == 201
    assert b'"value":1.50' in r.content
    read = await client.get(f"/Observation/{r.json()['id']}")
    assert b'"value":1.50' in read.content
    assert obs  # the dict form would have lost the trailing zero: the raw body proves it is kept


async def test_read_unknown_and_unknown_type(client):
    assert_outcome(await client.get("/Patient/nope"), 404, "Patient/nope")
    assert_outcome(await client.get("/NotAType/1"), 404, "NotAType")
    assert_outcome(await client.post("/NotAType", json={"resourceType": "NotAType"}), 404)
    assert_outcome(await client.get("/Patient/nope/_history/1"), 404)


async def test_conditional_read(client):
    created = (await post(client, patient())).json()
    url = f"/Patient/{created['id']}"
    first = await client.get(url)
    not_modified = await client.get(url, headers={"If-None-Match": 'W/"1"'})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert (await client.get(url, headers={"If-None-Match": 'W/"2"'})).status_code == 200
    since = await client.get(url, headers={"If-Modified-Since": first.headers["last-modified"]})
    assert since.status_code == 304
    old = await client.get(url, headers={"If-Modified-Since": "Tue, 01 Jan 2019 00:00:00 GMT"})
    assert old.status_code == 200


# --- update -------------------------------------------------------------------------------------


async def test_update_and_update_as_create(client):
    r = await client.put("/Patient/pat-1", json=patient(id="pat-1"), headers={"Content-Type": FHIR})
    assert r.status_code == 201
    assert r.headers["location"].endswith("/Patient/pat-1/_history/1")
    r2 = await client.put("/Patient/pat-1", json=patient(id="pat-1", gender="female"))
    assert r2.status_code == 200
    assert r2.json()["meta"]["versionId"] == "2" and r2.headers["etag"] == 'W/"2"'
    assert (await client.get("/Patient/pat-1")).json()["gender"] == "female"
    assert (await client.get("/Patient/pat-1/_history/1")).json().get("gender") is None


async def test_update_id_rules(client):
    assert_outcome(await client.put("/Patient/a", json=patient()), 400, "no id")
    assert_outcome(await client.put("/Patient/a", json=patient(id="b")), 400, "does not match")
    assert_outcome(await client.put("/Patient/a", json={"resourceType": "Observation", "id": "a"}), 400)
    assert_outcome(await client.put("/Patient/a%20b", json=patient(id="a b")), 400)
    assert (await client.get("/Patient/a/_history")).json()["total"] == 0


async def test_if_match(client):
    await client.put("/Patient/p", json=patient(id="p"))
    assert_outcome(await client.put("/Patient/p", json=patient(id="p"), headers={"If-Match": 'W/"7"'}), 412)
    ok = await client.put("/Patient/p", json=patient(id="p"), headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == 'W/"2"'
    assert_outcome(await client.delete("/Patient/p", headers={"If-Match": 'W/"1"'}), 412)
    assert_outcome(await client.put("/Patient/p", json=patient(id="p"), headers={"If-Match": "garbage"}), 400)


async def test_concurrent_updates_all_land(client):
    await client.put("/Patient/c", json=patient(id="c"))
    results = await asyncio.gather(*(client.put("/Patient/c", json=patient(id="c")) for _ in range(8)))
    assert all(r.status_code == 200 for r in results)
    versions = sorted(int(r.json()["meta"]["versionId"]) for r in results)
    assert versions == list(range(2, 10))


# --- delete -------------------------------------------------------------------------------------


async def test_delete_then_gone_and_history_keeps_it(client):
    created = (await post(client, patient())).json()
    url = f"/Patient/{created['id']}"
    d = await client.delete(url)
    assert d.status_code == 204 and d.headers["etag"] == 'W/"2"'
    assert_outcome(await client.get(url), 410)
    assert_outcome(await client.get(f"{url}/_history/2"), 410)
    assert (await client.get(f"{url}/_history/1")).status_code == 200
    again = await client.delete(url)
    assert again.status_code == 204  # idempotent: no new version
    history = (await client.get(f"{url}/_history")).json()
    assert history["total"] == 2
    assert history["entry"][0]["request"] == {"method": "DELETE", "url": f"Patient/{created['id']}"}
    assert "resource" not in history["entry"][0]
    revived = await client.put(url, json={**patient(), "id": created["id"]})
    assert revived.status_code == 201 and revived.json()["meta"]["versionId"] == "3"
    assert (await client.delete("/Patient/never-existed")).status_code == 204


# --- conditional interactions -------------------------------------------------------------------

INS = "urn:oid:1.2.250.1.213.1.4.8"


async def test_conditional_create(client):
    body = patient(identifier=[{"system": INS, "value": "1850775123456"}])
    criteria = f"identifier={INS}|1850775123456"
    first = await post(client, body, **{"If-None-Exist": criteria})
    assert first.status_code == 201
    second = await post(client, body, **{"If-None-Exist": criteria})
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    await post(client, body)  # a duplicate without the condition
    assert_outcome(await post(client, body, **{"If-None-Exist": criteria}), 412)
    assert_outcome(await post(client, body, **{"If-None-Exist": "nickname=x"}), 400, "nickname")
    by_name = await post(client, patient(), **{"If-None-Exist": "family=Dupont&given=h%C3%A9l%C3%A8ne"})
    assert by_name.status_code == 412  # the full search grammar: three Dupont/Hélène match


async def test_conditional_update(client):
    ident = [{"system": INS, "value": "2"}]
    r = await client.put(f"/Patient?identifier={INS}|2", json=patient(identifier=ident))
    assert r.status_code == 201
    pid = r.json()["id"]
    r2 = await client.put(f"/Patient?identifier={INS}|2", json=patient(identifier=ident, gender="male"))
    assert r2.status_code == 200 and r2.json()["id"] == pid and r2.json()["meta"]["versionId"] == "2"
    mismatch = await client.put(f"/Patient?identifier={INS}|2", json=patient(id="other", identifier=ident))
    assert_outcome(mismatch, 400, "differs")
    await post(client, patient(identifier=ident))
    assert_outcome(await client.put(f"/Patient?identifier={INS}|2", json=patient(identifier=ident)), 412)
    assert_outcome(await client.put("/Patient?nickname=x", json=patient()), 400, "nickname")
    assert_outcome(await client.put("/Patient", json=patient()), 400, "criteria")


async def test_conditional_delete_multiple(client):
    for _ in range(3):
        await post(client, patient(identifier=[{"system": "urn:test", "value": "dup"}]))
    keep = (await post(client, patient(identifier=[{"system": "urn:test", "value": "keep"}]))).json()
    r = await client.delete("/Patient?identifier=urn:test|dup")
    assert r.status_code == 204
    history = (await client.get("/Patient/_history")).json()
    assert [e["request"]["method"] for e in history["entry"]].count("DELETE") == 3
    assert (await client.get(f"/Patient/{keep['id']}")).status_code == 200
    by_id = await client.delete(f"/Patient?_id={keep['id']}")
    assert by_id.status_code == 204
    assert (await client.get(f"/Patient/{keep['id']}")).status_code == 410


# --- history ------------------------------------------------------------------------------------


async def test_history_paging_since_and_at(client):
    ids = []
    for i in range(5):
        r = await client.put(f"/Patient/h{i}", json=patient(id=f"h{i}"))
        ids.append(r.json()["id"])
    middle = (await client.put("/Patient/h0", json=patient(id="h0", gender="other"))).json()["meta"]["lastUpdated"]
    await client.put("/Observation/o1", json={"resourceType": "Observation", "id": "o1", "status": "final",
                                              "code": {"text": "x"}})  # fmt: skip

    seen = []
    url = "/Patient/_history?_count=2"
    while url:
        page = (await client.get(url)).json()
        assert page["type"] == "history" and page["total"] == 6
        seen += [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in page["entry"]]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = urlsplit(nxt[0])._replace(scheme="", netloc="").geturl() if nxt else None
    assert len(seen) == 6 and len(set(seen)) == 6
    assert seen[0] == ("h0", "2")

    system = (await client.get("/_history")).json()
    assert system["total"] == 7 and system["entry"][0]["resource"]["resourceType"] == "Observation"

    since = (await client.get("/Patient/_history", params={"_since": middle})).json()
    assert [e["resource"]["id"] for e in since["entry"]] == ["h0"]

    at = (await client.get("/Patient/h0/_history", params={"_at": middle})).json()
    assert [e["resource"]["meta"]["versionId"] for e in at["entry"]] == ["2"]

    assert_outcome(await client.get("/Patient/_history?_since=yesterday"), 400, "_since")
    assert_outcome(await client.get("/Patient/_history?_sort=x"), 400, "_sort")
    assert_outcome(await client.get("/_history?_cursor=zzz"), 400, "cursor")


# --- content negotiation ------------------------------------------------------------------------


async def test_content_negotiation(client):
    created = (await post(client, patient())).json()
    url = f"/Patient/{created['id']}"
    assert (await client.get(url, params={"_format": "json"})).status_code == 200
    plain = await client.get(url, params={"_format": "application/json"})
    assert plain.headers["content-type"].startswith("application/json")
    assert (await client.get(url, headers={"Accept": "application/json"})).status_code == 200
    assert (await client.get(url, headers={"Accept": "text/html,*/*;q=0.8"})).status_code == 200
    assert_outcome(await client.get(url, params={"_format": "xml"}), 406)
    assert_outcome(await client.get(url, headers={"Accept": "application/fhir+xml"}), 406)
    pretty = await client.get(url, params={"_pretty": "true"})
    assert b"\n  " in pretty.content and pretty.json() == created
    xml = await client.post("/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert_outcome(xml, 415)
    latin1 = await client.post("/Patient", content=b"{}", headers={"Content-Type": f"{FHIR}; charset=latin-1"})
    assert_outcome(latin1, 415)


async def test_method_not_allowed_is_an_outcome(client):
    assert_outcome(await client.delete("/Patient/x/_history/1"), 405)
    assert_outcome(await client.patch("/Patient/x/_history/1", content=b"[]"), 405)


# --- bad input: clear 4xx, never a partial write ------------------------------------------------


async def _nothing_written(client) -> None:
    assert (await client.get("/_history")).json()["total"] == 0


async def test_bad_input_is_a_clear_4xx_and_writes_nothing(client):
    h = {"Content-Type": FHIR}
    assert_outcome(await client.post("/Patient", content=b'{"resourceType": "Patient",', headers=h), 400, "JSON")
    assert_outcome(await client.post("/Patient", content=b"", headers=h), 400, "empty")
    assert_outcome(await client.post("/Patient", content=b"[1, 2]", headers=h), 400)
    assert_outcome(await client.post("/Patient", json={"resourceType": "Observation"}), 400, "resourceType")
    assert_outcome(await client.post("/Patient", json={"name": []}), 400)
    assert_outcome(await client.post("/Patient", content=b'{"resourceType":"Patient","a":NaN}', headers=h), 400)
    non_utf8 = '{"resourceType":"Patient","name":[{"family":"Hélène"}]}'.encode("latin-1")
    assert_outcome(await client.post("/Patient", content=non_utf8, headers=h), 400, "UTF-8")
    deep = b'{"resourceType":"Patient","extension":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_outcome(await client.post("/Patient", content=deep, headers=h), 400, "nesting")
    big = patient(text={"status": "generated", "div": "<div>" + "x" * BODY_LIMIT + "</div>"})
    assert_outcome(await post(client, big), 413)
    assert_outcome(await client.put("/Patient/big", json={**big, "id": "big"}), 413)
    await _nothing_written(client)


async def test_invalid_content_names_the_element(client):
    bad_date = await post(client, patient(birthDate="1980-13-45"))
    outcome = assert_outcome(bad_date, 400)
    assert "Patient.birthDate" in outcome["issue"][0]["expression"]
    unknown = assert_outcome(await post(client, patient(nickname="Lulu")), 400)
    assert any("Patient.nickname" in i.get("expression", []) for i in unknown["issue"])
    wrong_type = assert_outcome(await post(client, {"resourceType": "Patient", "active": "yes"}), 400)
    assert any("Patient.active" in i.get("expression", []) for i in wrong_type["issue"])
    missing = assert_outcome(await post(client, {"resourceType": "Observation", "code": {"text": "x"}}), 400)
    assert any("Observation.status" in i.get("expression", []) for i in missing["issue"])
    await _nothing_written(client)

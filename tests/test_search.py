"""R4 search over HTTP (http://hl7.org/fhir/R4/search.html), every parameter type, on both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import FHIR_BASE as BASE
from conftest import fhir_client

INS = "urn:oid:1.2.250.1.213.1.4.8"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def bp(pid: str, systolic: float, when: str, code: str = "8480-6") -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": "Systolic blood pressure"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": systolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
    }  # fmt: skip


PATIENTS = [
    {"resourceType": "Patient", "id": "helene", "gender": "female", "birthDate": "1980-03-15",
     "identifier": [{"system": INS, "value": "2800375123456",
                     "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}]}}],
     "name": [{"family": "Dupont", "given": ["Hélène"]}], "active": True,
     "address": [{"city": "Besançon", "postalCode": "25000"}]},
    {"resourceType": "Patient", "id": "marc", "gender": "male", "birthDate": "1975-11-02",
     "identifier": [{"system": INS, "value": "1751175654321"}],
     "name": [{"family": "Dupontel", "given": ["Marc"]}], "active": False},
    {"resourceType": "Patient", "id": "zoe", "gender": "female", "birthDate": "2012",
     "identifier": [{"value": "local-7"}],
     "name": [{"family": "Lefèvre-Œuvray", "given": ["Zoé"]}]},
]  # fmt: skip


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with fhir_client(store_url, default_page_size=2) as c:
        for p in PATIENTS:
            assert (await c.put(f"/Patient/{p['id']}", json=p)).status_code == 201
        for i, (pid, value, when) in enumerate([
                ("helene", 135, "2024-01-10T08:00:00+01:00"), ("helene", 118.5, "2024-02-10"),
                ("marc", 150, "2023-06-01"),
            ]):  # fmt: skip
            assert (
                await c.put(f"/Observation/bp{i}", json={**bp(pid, value, when), "id": f"bp{i}"})
            ).status_code == 201
        yield c


async def ids(client: httpx.AsyncClient, query: str, **headers) -> list[str]:
    """All ids of a search, following next links."""
    url: str | None = query
    found: list[str] = []
    while url:
        r = await client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["type"] == "searchset"
        found += [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = nxt[0].removeprefix(BASE) if nxt else None
    return sorted(found)


async def error(client: httpx.AsyncClient, query: str, text: str) -> None:
    r = await client.get(query)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome" and text in r.text


async def test_string(client):
    assert await ids(client, "/Patient?family=dupont") == ["helene", "marc"]
    assert await ids(client, "/Patient?family=DUPONT") == ["helene", "marc"]
    assert await ids(client, "/Patient?given=helene") == ["helene"]
    assert await ids(client, "/Patient?given=Hélène") == ["helene"]
    assert await ids(client, "/Patient?family=lefevre-oeuvray") == ["zoe"]
    assert await ids(client, "/Patient?family:exact=Dupont") == ["helene"]
    assert await ids(client, "/Patient?family:exact=dupont") == []
    assert await ids(client, "/Patient?family:contains=pont") == ["helene", "marc"]
    assert await ids(client, "/Patient?address-city=besancon") == ["helene"]
    assert await ids(client, "/Patient?name=zoe") == ["zoe"]
    assert await ids(client, "/Patient?family=dupont,lefevre") == ["helene", "marc", "zoe"]
    assert await ids(client, "/Patient?family=dupont&given=marc") == ["marc"]


async def test_token(client):
    assert await ids(client, "/Patient?gender=female") == ["helene", "zoe"]
    assert await ids(client, f"/Patient?identifier={INS}|2800375123456") == ["helene"]
    assert await ids(client, f"/Patient?identifier={INS}|") == ["helene", "marc"]
    assert await ids(client, "/Patient?identifier=|local-7") == ["zoe"]
    assert await ids(client, "/Patient?identifier=local-7") == ["zoe"]
    assert await ids(client, "/Patient?gender:not=male") == ["helene", "zoe"]
    assert await ids(client, "/Patient?active=true") == ["helene"]
    assert await ids(client, f"/Observation?code={LOINC}|8480-6") == ["bp0", "bp1", "bp2"]
    assert await ids(client, "/Observation?code:text=systolic") == ["bp0", "bp1", "bp2"]
    of_type = "http://terminology.hl7.org/CodeSystem/v2-0203|NI|2800375123456"
    assert await ids(client, f"/Patient?identifier:of-type={of_type}") == ["helene"]
    await error(client, "/Observation?code:in=http://example.org/vs", "ValueSet")


async def test_reference(client):
    assert await ids(client, "/Observation?subject=Patient/helene") == ["bp0", "bp1"]
    assert await ids(client, "/Observation?subject=helene") == ["bp0", "bp1"]
    assert await ids(client, "/Observation?subject:Patient=marc") == ["bp2"]
    assert await ids(client, f"/Observation?subject={BASE}/Patient/marc") == ["bp2"]
    assert await ids(client, "/Observation?patient=Patient/marc") == ["bp2"]
    await error(client, "/Observation?subject:Banana=1", "Banana")


async def test_date(client):
    assert await ids(client, "/Patient?birthdate=1980") == ["helene"]
    assert await ids(client, "/Patient?birthdate=1980-03") == ["helene"]
    assert await ids(client, "/Patient?birthdate=1980-03-15") == ["helene"]
    assert await ids(client, "/Patient?birthdate=lt1980") == ["marc"]
    assert await ids(client, "/Patient?birthdate=ge1980-03-15") == ["helene", "zoe"]
    assert await ids(client, "/Patient?birthdate=gt2000&birthdate=le2012-12-31") == ["zoe"]
    assert await ids(client, "/Patient?birthdate=ne1980") == ["marc", "zoe"]
    assert await ids(client, "/Patient?birthdate=sa1990") == ["zoe"]
    assert await ids(client, "/Patient?birthdate=eb1976") == ["marc"]
    # 08:00+01:00 is 07:00Z
    assert await ids(client, "/Observation?date=2024-01-10T07:00:00Z") == ["bp0"]
    assert await ids(client, "/Observation?date=ge2024-01-01&date=lt2024-02-01") == ["bp0"]
    await error(client, "/Patient?birthdate=yesterday", "birthdate")
    await error(client, "/Patient?birthdate=2020-13-01", "birthdate")


async def test_quantity_and_composite(client):
    assert await ids(client, f"/Observation?value-quantity=gt130|{UCUM}|mm[Hg]") == ["bp0", "bp2"]
    assert await ids(client, "/Observation?value-quantity=118.5") == ["bp1"]
    assert await ids(client, "/Observation?value-quantity=le120||mm[Hg]") == ["bp1"]
    assert await ids(client, "/Observation?value-quantity=135") == ["bp0"]
    assert await ids(client, f"/Observation?code-value-quantity={LOINC}|8480-6$gt140") == ["bp2"]
    await error(client, "/Observation?value-quantity=abc", "value-quantity")


async def test_missing_and_common_parameters(client):
    assert await ids(client, "/Patient?address:missing=true") == ["marc", "zoe"]
    assert await ids(client, "/Patient?address:missing=false") == ["helene"]
    assert await ids(client, "/Patient?_id=helene,zoe") == ["helene", "zoe"]
    assert await ids(client, "/Patient?_lastUpdated=gt2000-01-01") == ["helene", "marc", "zoe"]
    assert await ids(client, "/Patient?_lastUpdated=lt2000-01-01") == []


async def test_chains_and_has(client):
    assert await ids(client, "/Observation?subject:Patient.family=dupontel") == ["bp2"]
    assert await ids(client, f"/Observation?patient.identifier={INS}|2800375123456") == ["bp0", "bp1"]
    assert await ids(client, "/Observation?subject:Patient.gender=female&value-quantity=lt120") == ["bp1"]
    assert await ids(client, "/Patient?_has:Observation:subject:value-quantity=gt140") == ["marc"]
    assert await ids(client, "/Patient?_has:Observation:patient:code=8480-6") == ["helene", "marc"]
    await error(client, "/Observation?subject.nonsense=1", "nonsense")
    await error(client, "/Patient?_has:Observation:subject", "_has")


async def test_strictness_and_lenient(client):
    await error(client, "/Patient?nickname=x", "nickname")
    await error(client, "/Patient?family:fuzzy=x", "fuzzy")
    r = await client.get("/Patient?nickname=x&gender=male", headers={"Prefer": "handling=lenient"})
    assert r.status_code == 200
    entries = r.json()["entry"]
    assert [e["resource"]["id"] for e in entries if e["search"]["mode"] == "match"] == ["marc"]
    outcome = [e for e in entries if e["search"]["mode"] == "outcome"]
    assert "nickname" in str(outcome[0]["resource"])


async def test_results_total_count_paging(client):
    r = (await client.get("/Patient?_summary=count")).json()
    assert r["total"] == 3 and "entry" not in r
    r = (await client.get("/Patient?gender=female&_total=none")).json()
    assert "total" not in r
    page = (await client.get("/Patient")).json()
    assert page["total"] == 3 and len(page["entry"]) == 2
    assert all(e["fullUrl"].startswith(f"{BASE}/Patient/") for e in page["entry"])
    assert await ids(client, "/Patient?_count=1") == ["helene", "marc", "zoe"]


async def test_post_search_equals_get(client):
    get = await client.get("/Observation?subject=Patient/helene&_count=10")
    post = await client.post("/Observation/_search", data={"subject": "Patient/helene", "_count": "10"})
    assert post.status_code == 200
    assert [e["resource"]["id"] for e in post.json()["entry"]] == [e["resource"]["id"] for e in get.json()["entry"]]

"""Totals of a search page (issue 15, docs/search.md "Totals") on both stores: the default answers the page at
once with an exact total when it is cheap (a first page holding every match, or a bounded count) and otherwise
an estimate marked as such or none; ``_total=accurate`` counts, ``_total=none`` does not; a confined caller
never gets an estimate. On SQLite, a broad search walks the type in id order instead of building the set of
every match (``store/sqlite_plan.py``): the same pages, cursor after cursor, as the set plan.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import fhir_client
from test_access_control import StandInVerifier, token

from fhir_server.interactions import search as search_interaction
from fhir_server.rest.responses import TOTAL_METHOD
from fhir_server.store import mongo, sqlite_plan

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
LONG = {"exp": int(time.time()) + 24 * 3600}
PATIENTS = 12
PER_PATIENT = 10  # 120 Observations: 40 systolic, 40 diastolic, 40 heart rates
CODES = ("8480-6", "8462-4", "8867-4")


def observation(n: int) -> dict:
    patient = n % PATIENTS
    return {
        "resourceType": "Observation",
        "id": f"o{n:04d}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": CODES[n % 3]}]},
        "subject": {"reference": f"Patient/p{patient:02d}"},
        "effectiveDateTime": f"{2014 + n % 11}-0{1 + n % 9}-1{n % 10}",
        "valueQuantity": {"value": 60 + (n * 37) % 150, "unit": "u", "system": UCUM, "code": "mm[Hg]"},
    }


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with fhir_client(store_url, default_page_size=10) as c:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            *({"resource": {"resourceType": "Patient", "id": f"p{i:02d}"},
               "request": {"method": "PUT", "url": f"Patient/p{i:02d}"}} for i in range(PATIENTS)),
            *({"resource": observation(n), "request": {"method": "PUT", "url": f"Observation/o{n:04d}"}}
              for n in range(PATIENTS * PER_PATIENT)),
        ]}  # fmt: skip
        r = await c.post("/", json=bundle)
        assert r.status_code == 200, r.text
        yield c


async def page(c: httpx.AsyncClient, query: str, headers: dict | None = None) -> dict:
    r = await c.get(f"/{query}", headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


def method(bundle: dict) -> str | None:
    extensions = bundle.get("_total", {}).get("extension", ())
    return next((e["valueCode"] for e in extensions if e["url"] == TOTAL_METHOD), None)


async def all_ids(c: httpx.AsyncClient, query: str) -> list[str]:
    """Every match, page after page (the cursor links)."""
    found, url = [], f"/{query}"
    while url:
        r = await c.get(url)
        assert r.status_code == 200, r.text
        body = r.json()
        found += [e["resource"]["id"] for e in body.get("entry", ()) if e["search"]["mode"] == "match"]
        url = next(
            (link["url"].split("fhir.test", 1)[1] for link in body.get("link", ()) if link["relation"] == "next"), ""
        )
    return found


async def test_the_default_total_is_exact_when_cheap(client):
    small = await page(client, "Observation?subject=Patient/p01&_count=50")
    assert small["total"] == PER_PATIENT and method(small) is None  # the first page holds every match
    bigger = await page(client, f"Observation?code={LOINC}|8480-6")  # 40 matches, pages of 10: a bounded count
    assert bigger["total"] == 40 and method(bigger) is None and len(bigger["entry"]) == 10
    assert (await page(client, f"Observation?code={LOINC}|8480-6&_total=accurate"))["total"] == 40
    none = await page(client, f"Observation?code={LOINC}|8480-6&_total=none")
    assert "total" not in none and method(none) is None
    counted = await page(client, f"Observation?code={LOINC}|8480-6&_summary=count")
    assert counted["total"] == 40  # the one-token count on index entries alone
    r = await client.get("/Observation?_total=auto")
    assert r.status_code == 400


async def test_past_the_bounded_count_the_default_estimates(client, monkeypatch):
    monkeypatch.setattr(search_interaction, "AUTO_EXACT_UP_TO", 15)
    monkeypatch.setattr(sqlite_plan, "DENSE", 5)
    found = await page(client, f"Observation?code={LOINC}|8480-6")  # 11 matches up to o0030 of 120: 43
    assert method(found) == "estimate" and 20 <= found["total"] <= 80, found.get("total")
    assert (await page(client, f"Observation?code={LOINC}|8480-6&_total=accurate"))["total"] == 40


async def test_total_estimate_scales_the_first_page_or_a_sample(client, monkeypatch):
    estimated = await page(client, f"Observation?code={LOINC}|8480-6&_total=estimate")
    assert method(estimated) == "estimate" and 30 <= estimated["total"] <= 50, estimated.get("total")
    everything = await page(client, "Observation?_total=estimate")  # the first page holds the first ids: exact
    assert method(everything) == "estimate" and everything["total"] == PATIENTS * PER_PATIENT
    # sorted: no page in id order to scale, the store samples the first SAMPLE matches itself
    small = await page(client, f"Observation?code={LOINC}|8480-6&_sort=-date&_total=estimate")
    assert method(small) == "estimate" and small["total"] == 40  # fewer than SAMPLE: the exact number
    monkeypatch.setattr(sqlite_plan, "SAMPLE", 5)
    monkeypatch.setattr(mongo, "SAMPLE", 5)
    scaled = await page(client, f"Observation?code={LOINC}|8480-6&_sort=-date&_total=estimate")
    assert method(scaled) == "estimate" and 20 <= scaled["total"] <= 80, scaled.get("total")


async def test_the_estimate_reuses_the_type_size_for_a_while(client, monkeypatch):
    monkeypatch.setattr(sqlite_plan, "SAMPLE", 5)
    monkeypatch.setattr(mongo, "SAMPLE", 5)
    query = "Observation?_sort=-date&_total=estimate"  # the first 5 ids: 5 * live / 5
    assert (await page(client, query))["total"] == PATIENTS * PER_PATIENT
    more = [{"resource": {**observation(n), "id": f"z{n:04d}"},
             "request": {"method": "PUT", "url": f"Observation/z{n:04d}"}} for n in range(30)]  # fmt: skip
    r = await client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": more})
    assert r.status_code == 200, r.text
    assert (await page(client, query))["total"] == PATIENTS * PER_PATIENT  # the size counted a moment ago
    monkeypatch.setattr(sqlite_plan, "SIZE_TTL", 0.0)
    monkeypatch.setattr(mongo, "SIZE_TTL", 0.0)
    assert (await page(client, query))["total"] == PATIENTS * PER_PATIENT + 30


async def test_a_confined_caller_never_gets_an_estimate(client, monkeypatch):
    """The estimate counts everything stored: a confined caller gets the exact count or nothing, and the
    store is not even asked for an estimate."""
    monkeypatch.setattr(search_interaction, "AUTO_EXACT_UP_TO", 5)
    store = client._transport.app.state.context.store  # type: ignore[attr-defined]
    asked: list[object] = []
    original = store.estimate
    monkeypatch.setattr(store, "estimate", lambda *args, **kwargs: asked.append(args) or original(*args, **kwargs))
    assert method(await page(client, "Observation?_count=3&_total=estimate")) == "estimate"  # unconfined: given
    assert len(asked) == 1
    client._transport.app.state.auth = StandInVerifier()  # type: ignore[attr-defined]
    patient = token("patient/*.rs", patient="p01", **LONG)
    mine = await page(client, "Observation?_count=20", patient)
    assert mine["total"] == PER_PATIENT and method(mine) is None  # the first page holds every match
    for total in ("", "&_total=estimate"):
        confined = await page(client, f"Observation?_count=3{total}", patient)  # past the bounded count
        assert method(confined) == "omitted" and "total" not in confined, confined.get("total")
    assert len(asked) == 1


@pytest.mark.parametrize(
    "query",
    [
        f"Observation?code={LOINC}|8480-6&date=ge2018-01-01",
        "Observation?value-quantity=gt100&date=le2020",
        f"Patient?_has:Observation:subject:code={LOINC}|8867-4",
        "Patient?_has:Observation:subject:value-quantity=gt180",
        f"Observation?code={LOINC}|8480-6&_sort=-date",
    ],
)
async def test_a_broad_search_walks_the_type_and_pages_alike(client, monkeypatch, query, store_url):
    expected = await all_ids(client, query)  # the set plan (nothing is dense at the default threshold)
    assert expected, query
    monkeypatch.setattr(sqlite_plan, "DENSE", 3)  # now every condition is dense: the walk
    plans: list[bool] = []
    dense = sqlite_plan.dense
    monkeypatch.setattr(sqlite_plan, "dense", lambda conn, search: plans.append(dense(conn, search)) or plans[-1])
    assert await all_ids(client, query) == expected
    if store_url.startswith("sqlite") and "_sort" not in query:
        assert True in plans, query  # the walk was taken
    assert (await page(client, f"{query}&_total=accurate"))["total"] == len(expected)

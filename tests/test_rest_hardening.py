"""REST answers a new user and real clients tripped on (issue 9): each was a silent or confusing answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import fhir_client

FHIR = "application/fhir+json"
INS = "urn:oid:1.2.250.1.213.1.4.8"


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with fhir_client(store_url) as c:
        yield c


def outcome_text(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


async def count(client: httpx.AsyncClient, query: str) -> int:
    return (await client.get(f"/Patient?{query}&_summary=count")).json()["total"]


async def test_a_query_string_on_create_is_refused_not_ignored(client):
    body = {"resourceType": "Patient", "name": [{"family": "Martin"}]}
    r = await client.post("/Patient?family=Martin", json=body, headers={"Content-Type": FHIR})
    assert r.status_code == 400
    text = outcome_text(r)
    assert "If-None-Exist" in text and "family" in text
    assert await count(client, "family=Martin") == 0  # nothing written
    # _format and _pretty are not criteria: they stay accepted on a create
    r = await client.post("/Patient?_format=json&_pretty=true", json=body, headers={"Content-Type": FHIR})
    assert r.status_code == 201


async def test_matching_conditional_create_says_where_the_resource_is(client):
    body = {"resourceType": "Patient", "identifier": [{"system": INS, "value": "2830512345678"}]}
    headers = {"Content-Type": FHIR, "If-None-Exist": f"identifier={INS}|2830512345678"}
    first = await client.post("/Patient", json=body, headers=headers)
    assert first.status_code == 201
    again = await client.post("/Patient", json=body, headers=headers)
    assert again.status_code == 200
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == 'W/"1"' and again.headers["last-modified"] == first.headers["last-modified"]
    followed = await client.get(again.headers["location"])
    assert followed.status_code == 200 and followed.json()["id"] == first.json()["id"]
    minimal = await client.post("/Patient", json=body, headers={**headers, "Prefer": "return=minimal"})
    assert minimal.status_code == 200 and minimal.headers["location"] == first.headers["location"]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_group_export_without_an_id_is_a_clear_400(client, method):
    r = await client.request(method, "/Group/$export", headers={"Prefer": "respond-async"})
    assert r.status_code == 400
    assert "Group export needs a Group id" in outcome_text(r)


async def test_liveness_and_readiness(client):
    live = await client.get("/healthz")
    assert live.status_code == 200 and live.json() == {"status": "pass"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"store": "pass"}
    assert ready.headers["cache-control"] == "no-store"


async def test_readiness_fails_when_the_store_does_not_answer(client, monkeypatch):
    store = client._transport.app.state.context.store  # type: ignore[attr-defined]

    async def broken(*args: object) -> None:
        raise ConnectionError("store down")

    monkeypatch.setattr(store, "read_current", broken)
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"status": "fail", "checks": {"store": "ConnectionError"}}
    assert (await client.get("/healthz")).status_code == 200  # alive, not ready


async def test_probes_need_no_token_and_carry_no_data(store_url):
    async with fhir_client(store_url, auth=True) as c:
        assert (await c.get("/Patient")).status_code == 401
        for path in ("/healthz", "/readyz"):
            r = await c.get(path)
            assert r.status_code == 200 and set(r.json()) <= {"status", "checks"}

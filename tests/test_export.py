"""Bulk Data $export (https://hl7.org/fhir/uv/bulkdata/export.html): kick-off, status, files, on both stores."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import FHIR_BASE

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.interactions import export
from fhir_server.store.query import IdIn, Not

FHIR = "application/fhir+json"
ASYNC = {"Prefer": "respond-async", "Accept": FHIR}


@contextlib.asynccontextmanager
async def running(store_url: str, export_dir: Path, **settings) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    """The app (to reach ``state``) and an in-process client, like ``conftest.fhir_client``."""
    settings.setdefault("load_definitions", False)
    settings.setdefault("auth", False)
    app = create_app(Settings(store=store_url, export_dir=str(export_dir), **settings))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        yield app, c


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return tmp_path / "export"


@pytest.fixture
async def server(store_url: str, export_dir: Path) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    async with running(store_url, export_dir) as pair:
        yield pair


@pytest.fixture
async def client(server) -> httpx.AsyncClient:
    return server[1]


async def put(client: httpx.AsyncClient, resource: dict) -> dict:
    r = await client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource, headers={"Content-Type": FHIR})
    assert r.status_code in (200, 201), r.text
    return r.json()


def patient(id_: str, gender: str = "female", **extra) -> dict:
    return {"resourceType": "Patient", "id": id_, "gender": gender, **extra}


def observation(id_: str, subject: str, code: str = "a", performer: str | None = None) -> dict:
    body = {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": "http://example.org", "code": code}]},
        "subject": {"reference": f"Patient/{subject}"},
    }
    if performer:
        body["performer"] = [{"reference": f"Patient/{performer}"}]
    return body


async def seed(client: httpx.AsyncClient) -> None:
    """p1, p2, p3; o1..o3 (one per patient), o4 (p1, performer p2), o5 (p3, performer p1), a Condition of p1,
    a Practitioner (no compartment) and Group g1 of p1 and p3 (p2 an inactive member)."""
    await put(client, patient("p1"))
    await put(client, patient("p2", "male"))
    await put(client, patient("p3"))
    await put(client, observation("o1", "p1", "a"))
    await put(client, observation("o2", "p2", "b"))
    await put(client, observation("o3", "p3", "a"))
    await put(client, observation("o4", "p1", "b", performer="p2"))
    await put(client, observation("o5", "p3", "b", performer="p1"))
    await put(client, {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}})
    await put(client, {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "House"}]})
    members = [
        {"entity": {"reference": "Patient/p1"}},
        {"entity": {"reference": "Patient/p2"}, "inactive": True},
        {"entity": {"reference": "Patient/p3"}},
    ]
    await put(client, {"resourceType": "Group", "id": "g1", "type": "person", "actual": True, "member": members})


async def kickoff(client: httpx.AsyncClient, path: str = "/$export", **params: str) -> str:
    r = await client.get(path, params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    location = r.headers["content-location"]
    assert location.startswith(f"{FHIR_BASE}/$export-status/")
    return location


async def wait(client: httpx.AsyncClient, location: str) -> httpx.Response:
    for _ in range(1000):
        r = await client.get(location)
        if r.status_code != 202:
            return r
        assert r.headers["x-progress"] and r.headers["retry-after"].isdigit()
        await asyncio.sleep(0.01)
    raise AssertionError("the export did not finish")


async def manifest(client: httpx.AsyncClient, location: str) -> dict:
    r = await wait(client, location)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "expires" in r.headers
    return r.json()


async def files(client: httpx.AsyncClient, found: dict) -> dict[str, list[dict]]:
    """type → the resources of its files, each line checked to be one resource of that type."""
    out: dict[str, list[dict]] = {}
    for entry in found["output"]:
        r = await client.get(entry["url"])
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = r.content.split(b"\n")
        assert lines[-1] == b""  # every line ends with a newline
        resources = [json.loads(line) for line in lines[:-1]]
        assert len(resources) == entry["count"]
        assert all(res["resourceType"] == entry["type"] and res["id"] for res in resources)
        out.setdefault(entry["type"], []).extend(resources)
    return out


def ids(found: dict[str, list[dict]]) -> dict[str, list[str]]:
    return {t: sorted(r["id"] for r in rs) for t, rs in found.items()}


async def export_ids(client: httpx.AsyncClient, path: str = "/$export", **params: str) -> dict[str, list[str]]:
    return ids(await files(client, await manifest(client, await kickoff(client, path, **params))))


def assert_outcome(r: httpx.Response, status: int, text: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert text in r.text, r.text


# --- kick-off --------------------------------------------------------------------------------------


async def test_kickoff_validation(client):
    await seed(client)
    r = await client.get("/$export", headers={"Accept": FHIR})
    assert_outcome(r, 400, "respond-async")
    bad = {
        "_outputFormat": ("text/csv", "_outputFormat"),
        "_type": ("Patient,Foo", "Foo"),
        "_since": ("yesterday", "_since"),
        "_typeFilter": ("Foo?name=x", "_typeFilter"),
        "_elements": ("id", "not supported"),
        "_until": ("2024-01-01T00:00:00Z", "not supported"),
        "bogus": ("1", "bogus"),
    }
    for name, (value, text) in bad.items():
        assert_outcome(await client.get("/$export", params={name: value}, headers=ASYNC), 400, text)
    for params, text in [
        ({"_since": "2024-01-01"}, "_since"),  # a date, not an instant
        ([("_since", "2024-01-01T00:00:00Z"), ("_since", "2024-01-02T00:00:00Z")], "only once"),
        ({"_typeFilter": "Observation?bogus=1"}, "bogus"),
        ({"_typeFilter": "Observation?code=a&_count=5"}, "_count"),
        ({"_typeFilter": "Observation"}, "_typeFilter"),
        ({"_type": "Patient", "_typeFilter": "Observation?code=a"}, "not among the exported types"),
    ]:
        assert_outcome(await client.get("/$export", params=params, headers=ASYNC), 400, text)
    # Patient and Group exports: only Patient compartment types.
    r = await client.get("/Patient/$export", params={"_type": "Practitioner"}, headers=ASYNC)
    assert_outcome(r, 400, "Patient compartment")
    assert_outcome(await client.get("/Group/nope/$export", headers=ASYNC), 404, "Group/nope")
    assert_outcome(await client.get("/$export", headers={**ASYNC, "Accept": "application/fhir+xml"}), 406, "Accept")
    assert (await client.head("/$export", headers=ASYNC)).status_code == 405
    # What is accepted: the three NDJSON names, any Accept JSON, lenient handling of unknown parameters.
    for fmt in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        assert (await client.get("/$export", params={"_outputFormat": fmt}, headers=ASYNC)).status_code == 202
    assert (await client.get("/$export", headers={"Prefer": "respond-async"})).status_code == 202
    lenient = {"Prefer": "respond-async, handling=lenient"}
    assert (await client.get("/$export", params={"bogus": "1"}, headers=lenient)).status_code == 202


async def test_kickoff_by_post_with_parameters(client):
    await seed(client)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Observation"},
            {"name": "_typeFilter", "valueString": "Observation?code=a"},
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
        ],
    }
    r = await client.post("/$export", json=body, headers={**ASYNC, "Content-Type": FHIR})
    assert r.status_code == 202, r.text
    found = await manifest(client, r.headers["content-location"])
    assert ids(await files(client, found)) == {"Observation": ["o1", "o3"]}
    r = await client.post("/$export", json={"resourceType": "Patient"}, headers={**ASYNC, "Content-Type": FHIR})
    assert_outcome(r, 400, "Parameters")
    patient_param = {"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {}}]}
    r = await client.post("/Patient/$export", json=patient_param, headers={**ASYNC, "Content-Type": FHIR})
    assert_outcome(r, 400, "not supported")


# --- system export ---------------------------------------------------------------------------------


async def test_system_export_writes_one_ndjson_file_per_type(client):
    await seed(client)
    location = await kickoff(client, _type="Patient,Observation,Practitioner")
    found = await manifest(client, location)
    assert found["requiresAccessToken"] is False
    assert found["error"] == []
    assert found["request"] == f"{FHIR_BASE}/$export?_type=Patient%2CObservation%2CPractitioner"
    assert found["transactionTime"].endswith("Z")
    counts = {o["type"]: o["count"] for o in found["output"]}
    assert counts == {"Patient": 3, "Observation": 5, "Practitioner": 1}
    assert all(o["url"].startswith(f"{FHIR_BASE}/$export-file/") for o in found["output"])
    resources = await files(client, found)
    assert ids(resources) == {
        "Patient": ["p1", "p2", "p3"],
        "Observation": ["o1", "o2", "o3", "o4", "o5"],
        "Practitioner": ["pr1"],
    }
    # The lines are the stored resources, as a read returns them.
    read = (await client.get("/Observation/o4")).json()
    assert next(r for r in resources["Observation"] if r["id"] == "o4") == read
    # Without _type: every type that has resources, nothing else.
    assert set(await export_ids(client)) == {"Patient", "Observation", "Condition", "Practitioner", "Group"}


async def test_since_exports_what_changed_at_or_after(client):
    await seed(client)
    await asyncio.sleep(0.01)
    changed = await put(client, observation("o2", "p2", "c"))  # updated
    await put(client, patient("p4"))  # created
    since = changed["meta"]["lastUpdated"]
    assert await export_ids(client, _since=since) == {"Observation": ["o2"], "Patient": ["p4"]}
    assert await export_ids(client, _since="2999-01-01T00:00:00+01:00") == {}
    assert (await export_ids(client, _since="2000-01-01T00:00:00Z"))["Observation"] == ["o1", "o2", "o3", "o4", "o5"]


async def test_type_filter_uses_search_criteria(client):
    await seed(client)
    assert await export_ids(client, _type="Observation", _typeFilter="Observation?code=a") == {
        "Observation": ["o1", "o3"]
    }
    # Several filters of one type are ORed; a type without filter is exported whole.
    found = await export_ids(
        client,
        "/$export",
        _type="Observation,Patient",
        _typeFilter=["Observation?code=b&subject=Patient/p1", "Observation?subject=Patient/p3&code=a"],
    )
    assert found == {"Observation": ["o3", "o4"], "Patient": ["p1", "p2", "p3"]}
    assert await export_ids(client, _typeFilter="Patient?gender=male", _type="Patient") == {"Patient": ["p2"]}


# --- Patient and Group exports ---------------------------------------------------------------------


async def test_patient_export_is_the_patient_compartments(client, monkeypatch):
    await seed(client)
    expected = {
        "Patient": ["p1", "p2", "p3"],
        "Observation": ["o1", "o2", "o3", "o4", "o5"],
        "Condition": ["c1"],
        "Group": ["g1"],
    }
    assert await export_ids(client, "/Patient/$export") == expected  # no Practitioner: not in a compartment
    # The same as the compartment searches, each resource once even when in two batches' compartments.
    monkeypatch.setattr(export, "PATIENT_BATCH", 1)
    assert await export_ids(client, "/Patient/$export") == expected
    union: set[str] = set()
    for id_ in ("p1", "p2", "p3"):
        bundle = (await client.get(f"/Patient/{id_}/Observation")).json()
        union |= {e["resource"]["id"] for e in bundle.get("entry", [])}
    assert sorted(union) == expected["Observation"]
    found = await export_ids(client, "/Patient/$export", _type="Observation", _typeFilter="Observation?code=b")
    assert found == {"Observation": ["o2", "o4", "o5"]}


async def test_group_export_is_the_members_data(client, monkeypatch):
    await seed(client)
    await put(client, patient("p9"))
    await put(client, observation("o9", "p9"))
    # p1 and p3 (p2 is an inactive member): o2 (p2's) is out, o4 (p1's, performed by p2) in.
    expected = {
        "Patient": ["p1", "p3"],
        "Observation": ["o1", "o3", "o4", "o5"],
        "Condition": ["c1"],
        "Group": ["g1"],
    }
    assert await export_ids(client, "/Group/g1/$export") == expected
    monkeypatch.setattr(export, "PATIENT_BATCH", 1)  # o5 is in p1's and p3's compartments: written once
    assert await export_ids(client, "/Group/g1/$export") == expected
    assert await export_ids(client, "/Group/g1/$export", _type="Patient") == {"Patient": ["p1", "p3"]}
    # Members that are not Patients, or gone, are skipped; an empty group exports nothing.
    await client.delete("/Patient/p3")
    group = {"resourceType": "Group", "id": "g2", "type": "person", "actual": True}
    group["member"] = [{"entity": {"reference": "Patient/p3"}}, {"entity": {"reference": "Practitioner/pr1"}}]
    await put(client, group)
    assert await export_ids(client, "/Group/g2/$export") == {}


# --- status, cancel, expiry, restart ---------------------------------------------------------------


@contextlib.contextmanager
def gated(app, monkeypatch, release: bool = True) -> asyncio.Event:
    """Hold every store page of the exports until the event is set (at the end of the block, if
    ``release``; else never: the job is still running when the server stops)."""
    gate = asyncio.Event()
    store = app.state.context.store
    original = store.search_page

    async def search_page(*args, **kwargs):
        await gate.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(store, "search_page", search_page)
    try:
        yield gate
    finally:
        if release:
            gate.set()


async def test_status_is_202_while_running_then_the_manifest(server, monkeypatch):
    app, client = server
    await seed(client)
    with gated(app, monkeypatch) as gate:
        location = await kickoff(client, _type="Patient")
        await asyncio.sleep(0.05)
        r = await client.get(location)
        assert r.status_code == 202
        assert r.headers["x-progress"] and r.headers["retry-after"] == "2"
        assert r.content == b""
        gate.set()
        found = await manifest(client, location)
    assert set(found) == {"transactionTime", "request", "requiresAccessToken", "output", "error"}
    assert [(o["type"], o["count"]) for o in found["output"]] == [("Patient", 3)]
    assert (await client.get(f"{FHIR_BASE}/$export-status/unknown-job-id-0123456789")).status_code == 404


async def test_delete_cancels_and_removes_the_files(server, export_dir, monkeypatch):
    app, client = server
    await seed(client)
    with gated(app, monkeypatch) as gate:
        location = await kickoff(client)
        job_id = location.rsplit("/", 1)[1]
        r = await client.delete(location)
        assert r.status_code == 202
        assert r.json()["issue"][0]["severity"] == "information"
        gate.set()
        await asyncio.sleep(0.1)
    assert (await client.get(location)).status_code == 404
    assert (await client.delete(location)).status_code == 404
    assert not (export_dir / job_id).exists() and not (export_dir / f"{job_id}.json").exists()
    # A complete job too: its files go.
    found = await manifest(client, location := await kickoff(client, _type="Patient"))
    job_id = location.rsplit("/", 1)[1]
    assert (export_dir / job_id).is_dir()
    assert (await client.delete(location)).status_code == 202
    assert not (export_dir / job_id).exists()
    assert (await client.get(found["output"][0]["url"])).status_code == 404


async def test_expired_jobs_are_gone(server, export_dir, monkeypatch):
    app, client = server
    await seed(client)
    location = await kickoff(client, _type="Patient")
    found = await manifest(client, location)
    url = found["output"][0]["url"]
    assert (await client.get(url)).status_code == 200
    real = export._now
    monkeypatch.setattr(export, "_now", lambda: real() + 3601)  # default expiry: one hour
    assert (await client.get(url)).status_code == 404
    assert (await client.get(location)).status_code == 404
    assert list(export_dir.iterdir()) == []
    # The housekeeping sweep removes expired jobs nobody asks about.
    monkeypatch.setattr(export, "_now", real)
    location = await kickoff(client, _type="Patient")
    await manifest(client, location)
    monkeypatch.setattr(export, "_now", lambda: real() + 3601)
    app.state.exports._sweep()
    assert list(export_dir.iterdir()) == []


async def test_files_are_only_those_of_the_manifest(client):
    await seed(client)
    found = await manifest(client, location := await kickoff(client, _type="Patient"))
    job_id = location.rsplit("/", 1)[1]
    assert (await client.get(found["output"][0]["url"])).status_code == 200
    for name in ("Observation-1.ndjson", "..%2F" + job_id + ".json", "%2E%2E"):
        assert (await client.get(f"/$export-file/{job_id}/{name}")).status_code == 404
    assert (await client.get("/$export-file/not-a-job-id-0123456789/Patient-1.ndjson")).status_code == 404


async def test_a_restart_keeps_complete_jobs_and_fails_running_ones(store_url, export_dir, monkeypatch):
    async with running(store_url, export_dir) as (app, client):
        await seed(client)
        done = await kickoff(client, _type="Patient")
        found = await manifest(client, done)
        with gated(app, monkeypatch, release=False):
            interrupted = await kickoff(client, _type="Patient")
            await asyncio.sleep(0.05)
            assert (await client.get(interrupted)).status_code == 202
    # A job a crashed process left "running" (its state file says so, nobody runs it).
    crashed = json.loads((export_dir / f"{done.rsplit('/', 1)[1]}.json").read_text())
    crashed.update(id="crashed-job-0123456789abcdef", status="running", finished=None, expires=None, output=[])
    (export_dir / "crashed-job-0123456789abcdef.json").write_text(json.dumps(crashed))
    async with running(store_url, export_dir) as (app, client):
        assert await manifest(client, done) == found
        assert (await client.get(found["output"][0]["url"])).status_code == 200
        for location in (interrupted, f"{FHIR_BASE}/$export-status/crashed-job-0123456789abcdef"):
            r = await client.get(location)
            assert_outcome(r, 500, "interrupted")


async def test_files_are_split(client, monkeypatch):
    await seed(client)
    monkeypatch.setattr(export, "FILE_MAX", 2)
    found = await manifest(client, await kickoff(client, _type="Observation"))
    assert [(o["type"], o["count"]) for o in found["output"]] == [("Observation", 2)] * 2 + [("Observation", 1)]
    assert len({o["url"] for o in found["output"]}) == 3
    assert ids(await files(client, found)) == {"Observation": ["o1", "o2", "o3", "o4", "o5"]}


# --- memory and access ---------------------------------------------------------------------------


async def test_memory_is_bounded_by_a_page(server, monkeypatch):
    app, client = server
    for i in range(5):
        await put(client, patient(f"p{i}"))
    for i in range(25):
        await put(client, observation(f"o{i:02d}", f"p{i % 5}"))
    monkeypatch.setattr(export, "PAGE_SIZE", 2)
    monkeypatch.setattr(export, "PATIENT_BATCH", 2)
    store = app.state.context.store
    original = store.search_page
    calls: list[tuple[int, int]] = []

    async def search_page(query, limit, **kwargs):
        found = await original(query, limit, **kwargs)
        calls.append((limit, len(found)))
        return found

    monkeypatch.setattr(store, "search_page", search_page)
    for path in ("/$export", "/Patient/$export"):
        found = await manifest(client, await kickoff(client, path, _type="Observation,Patient"))
        assert {o["type"]: o["count"] for o in found["output"]} == {"Observation": 25, "Patient": 5}
        assert len(calls) > 13  # 25 Observations, 2 at a time
        assert {limit for limit, _ in calls} == {2}
        assert max(n for _, n in calls) == 2
        calls.clear()


async def test_access_constraints_are_honoured(server):
    app, client = server
    await seed(client)
    ctx = app.state.context

    def hiding(type_: str):
        if type_ == "Observation":
            return (Not(IdIn(("o1",))),)
        if type_ == "Patient":
            return (Not(IdIn(("p2",))),)
        return ()

    app.state.context = dataclasses.replace(ctx, constraints=hiding)
    found = await export_ids(client, _type="Observation,Patient")
    assert found == {"Observation": ["o2", "o3", "o4", "o5"], "Patient": ["p1", "p3"]}
    # Patient level: p2 is not selected (o2, only p2's, is out); Group level: hidden members are out too.
    found = await export_ids(client, "/Patient/$export", _type="Observation,Patient")
    assert found == {"Observation": ["o3", "o4", "o5"], "Patient": ["p1", "p3"]}
    # _typeFilter cannot reach hidden resources either.
    assert await export_ids(client, _type="Observation", _typeFilter="Observation?subject=Patient/p1") == {
        "Observation": ["o4"]
    }
    app.state.context = dataclasses.replace(ctx, constraints=lambda t: (IdIn(()),) if t == "Group" else ())
    r = await client.get("/Group/g1/$export", headers=ASYNC)
    assert_outcome(r, 404, "Group/g1")

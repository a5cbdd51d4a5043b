"""The official SearchParameters are listed as resources; ``reindex`` rebuilds index entries."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import fhir_client, fhir_server_command

from fhir_server.interactions.reindex import reindex
from fhir_server.store import ResourceVersion, open_store
from fhir_server.store.query import Entry, Search

REPO = Path(__file__).resolve().parents[1]


async def test_search_parameters_are_listed(store_url, monkeypatch):
    # the 1,375 official R4 SearchParameters and ours (capability/search-parameters-custom.json)
    expected = 1375 + len(json.loads((REPO / "capability" / "search-parameters-custom.json").read_text())["parameters"])
    if store_url.startswith("mongodb"):  # the stand-in is slow past a few thousand writes: a subset there
        from fhir_server.interactions import definitions as module
        from fhir_server.search.registry import definitions

        subset = [d for d in definitions() if {"Patient", "Person"} & set(d.get("base", ()))]
        monkeypatch.setattr(module, "definitions", lambda: subset)
        expected = len(subset)
    async with fhir_client(store_url, load_definitions=True) as client:
        total = (await client.get("/SearchParameter?_summary=count")).json()["total"]
        assert total == expected
        found = (await client.get("/SearchParameter?base=Patient&code=family")).json()
        assert [e["resource"]["id"] for e in found["entry"]] == ["individual-family"]
        assert found["entry"][0]["resource"]["expression"].startswith("Patient.name.family")
        one = await client.get("/SearchParameter/individual-birthdate")
        assert one.status_code == 200 and one.json()["type"] == "date"
        if not store_url.startswith("mongodb"):
            ours = await client.get("/SearchParameter/Binary-securitycontext")
            assert ours.status_code == 200 and ours.json()["expression"] == "Binary.securityContext"
    async with fhir_client(store_url, load_definitions=True) as client:  # loaded once, not twice
        assert (await client.get("/SearchParameter/individual-birthdate/_history")).json()["total"] == 1


async def test_reindex_rebuilds_entries(store_url, tmp_path):
    store = open_store(store_url)
    async with store:
        body = b'{"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"},' \
               b'"name":[{"family":"Lef\\u00e8vre"}],"birthDate":"1980-05-01"}'  # fmt: skip

        async def work(tx):  # stored without entries, as if indexed before a registry change
            await tx.put(ResourceVersion("Patient", "p1", 1, 1, "PUT", body), [])

        await store.transact(work)
        family = Search("Patient", (Entry("family", value_prefix="lefevre"),))
        assert await store.count(family) == 0
        assert await reindex(store, ["Patient", "Observation"]) == 1
        assert await store.count(family) == 1
        assert (await store.read_current("Patient", "p1")).version == 1  # no new version


def empty_bundle(directory):  # an empty collection Bundle: loading it creates the store
    path = directory / "empty.json"
    path.write_text('{"resourceType": "Bundle", "type": "collection"}')
    return path


def test_reindex_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'fhir.db'}"
    missing = subprocess.run([*fhir_server_command(), "reindex", "--store", url], capture_output=True, text=True)
    assert missing.returncode == 2 and "no database at" in missing.stderr  # never a new, empty one
    subprocess.run([*fhir_server_command(), "load", "--store", url, "--workers", "0", str(empty_bundle(tmp_path))],
                   capture_output=True, check=True)  # fmt: skip
    out = subprocess.run(
        [*fhir_server_command(), "reindex", "--store", url, "--type", "Patient"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "reindexed 0 resources" in out.stdout
    bad = subprocess.run([*fhir_server_command(), "reindex", "--store", url, "--type", "Nope"], capture_output=True)
    assert bad.returncode == 2

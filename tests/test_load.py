"""``fhir-server load``: Bundles, NDJSON and archives into the store, with the rules of ``POST [base]``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import fhir_client, fhir_server_command
from test_bundles import post

from fhir_server.config import Settings
from fhir_server.fhirjson import loads
from fhir_server.instant import to_instant
from fhir_server.loader import Loader, load_paths
from fhir_server.store import HistoryQuery, open_store

INS = "urn:oid:1.2.250.1.213.1.4.8"
TAG = "urn:test:load"


def patient(ins: str, family: str = "Martin", **more) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": INS, "value": ins}], "name": [{"family": family}],
            **more}  # fmt: skip


def observation(subject: str, text: str = "PAS", **more) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": text},
            "subject": {"reference": subject}, **more}  # fmt: skip


def bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def put(resource: dict) -> dict:
    return {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}


P1, O1 = "urn:uuid:5b0f4c3e-8f21-4d5e-9a51-0c1f9f0c7a01", "urn:uuid:5b0f4c3e-8f21-4d5e-9a51-0c1f9f0c7a02"


def write_json(path: Path, body: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return path


def good_inputs(root: Path) -> Path:
    """A directory: a transaction (urn:uuid references), a collection, an NDJSON file and a .tgz holding a
    transaction Bundle (and a file an archive may carry that is no input)."""
    data = root / "data"
    write_json(data / "a-transaction.json", bundle("transaction",
        post(O1, observation(P1)), post(P1, patient("1800112345678", "Lefèvre")),
        {"fullUrl": "urn:uuid:5b0f4c3e-8f21-4d5e-9a51-0c1f9f0c7a03", "resource": {
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": P1}}, "request": {"method": "POST", "url": "Encounter"}},
    ))  # fmt: skip
    write_json(data / "b-collection.json", bundle("collection",
        {"resource": {"resourceType": "Practitioner", "id": "prac-1", "name": [{"family": "Durand"}]}},
        {"resource": {"resourceType": "Organization", "name": "Clinique du Parc"}},
    ))  # fmt: skip
    lines = [
        json.dumps(patient("2900175000001", "Nd", id="nd-1")),
        "",
        json.dumps(observation("Patient/nd-1", "poids", id="nd-obs-1")),
        json.dumps({"resourceType": "Condition", "subject": {"reference": "Patient/nd-1"}, "code": {"text": "HTA"}}),
    ]
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "c.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data / "sub" / "README.txt").write_text("not an input", encoding="utf-8")
    inner = json.dumps(bundle("transaction", post(None, patient("1750375000002", "Archive")))).encode()
    with tarfile.open(data / "d-archive.tgz", "w:gz") as archive:
        for name, payload in (("export/LICENSE.txt", b"text"), ("export/p.json", inner)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return data


GOOD_FILES, GOOD_RESOURCES = 4, 3 + 2 + 3 + 1


def bad_inputs(root: Path) -> Path:
    """A transaction with an invalid entry (nothing of it may be stored), a batch with one failing entry, an
    NDJSON file with a bad line 2, a file that is not JSON."""
    data = root / "bad"
    write_json(data / "e-bad-transaction.json", bundle("transaction",
        post("urn:uuid:1", patient("1111111111111", "Ok")),
        post("urn:uuid:2", {**patient("2222222222222"), "birthDate": "1990-13-45"}),
    ))  # fmt: skip
    write_json(data / "f-batch.json", bundle("batch",
        post(None, patient("3333333333333", "Batch")),
        post(None, {**observation("Patient/nd-1"), "colour": "blue"}),
        post(None, patient("4444444444444", "Batch")),
    ))  # fmt: skip
    (data / "g.ndjson").write_text(
        json.dumps(patient("5555555555555", "Line")) + "\n{not json\n" + json.dumps(patient("6666666666666")) + "\n",
        encoding="utf-8",
    )
    (data / "h.json").write_text("[1, 2", encoding="utf-8")
    return data


async def search(client, path: str) -> list[dict]:
    r = await client.get(path)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]


async def run_load(store_url: str, paths, **options):
    store = open_store(store_url)
    stream = io.StringIO()
    async with store:
        report = await load_paths(store, paths, Settings(store=store_url), stream=stream, **options)
    return report, stream.getvalue()


async def test_load_bundles_ndjson_and_archives(store_url, tmp_path):
    data = good_inputs(tmp_path)
    report, output = await run_load(store_url, [data])
    assert (report.files, report.resources, report.errors) == (GOOD_FILES, GOOD_RESOURCES, 0), output
    assert not report.stopped and report.redone == 0
    async with fhir_client(store_url) as client:
        [lefevre] = await search(client, "/Patient?family=lefevre")
        [obs] = await search(client, f"/Observation?subject=Patient/{lefevre['id']}")
        assert obs["subject"]["reference"] == f"Patient/{lefevre['id']}"  # urn:uuid rewritten
        [enc] = await search(client, f"/Encounter?patient={lefevre['id']}")
        assert enc["subject"]["reference"] == f"Patient/{lefevre['id']}"
        assert lefevre["meta"]["versionId"] == "1"
        # collection: with an id → PUT Type/id; without → POST
        assert (await client.get("/Practitioner/prac-1")).status_code == 200
        assert len(await search(client, "/Organization?name=clinique")) == 1
        # NDJSON
        nd = (await client.get("/Patient/nd-1")).json()
        assert nd["name"][0]["family"] == "Nd"
        assert [o["id"] for o in await search(client, "/Observation?subject=Patient/nd-1")] == ["nd-obs-1"]
        assert len(await search(client, "/Condition?subject=Patient/nd-1")) == 1
        # the archive's Bundle
        assert len(await search(client, f"/Patient?identifier={INS}|1750375000002")) == 1
        # stamped at write time: meta.lastUpdated and the _lastUpdated index agree
        since = nd["meta"]["lastUpdated"]
        assert any(p["id"] == "nd-1" for p in await search(client, f"/Patient?_lastUpdated=eq{since}"))
        assert (await client.get("/_history?_count=0")).json()["total"] == GOOD_RESOURCES


async def test_errors_name_file_and_entry_and_the_rest_loads(store_url, tmp_path):
    good, bad = good_inputs(tmp_path), bad_inputs(tmp_path)
    report, output = await run_load(store_url, [bad, good])
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert report.errors == len(errors) == 4, output
    [tx_error] = [e for e in errors if "e-bad-transaction.json" in e]
    assert "Bundle.entry[1]" in tx_error and "1990-13-45" in tx_error and "nothing of it stored" in tx_error
    [batch_error] = [e for e in errors if "f-batch.json" in e]
    assert "Bundle.entry[1]" in batch_error and "colour" in batch_error
    [line_error] = [e for e in errors if "g.ndjson" in e]
    assert ": line 2: " in line_error and "JSON" in line_error
    [json_error] = [e for e in errors if "/h.json" in e]
    assert "Malformed JSON" in json_error
    # everything else is there: 2 batch entries, 2 NDJSON lines, and all the good files
    assert report.resources == GOOD_RESOURCES + 4
    assert report.files == GOOD_FILES + 4
    async with fhir_client(store_url) as client:
        assert await search(client, f"/Patient?identifier={INS}|1111111111111") == []  # all or nothing
        assert len(await search(client, "/Patient?family=batch")) == 2
        assert len(await search(client, f"/Patient?identifier={INS}|6666666666666")) == 1
        assert (await client.get("/Patient/nd-1")).status_code == 200


async def test_fail_fast_stops_at_the_first_error(store_url, tmp_path):
    bad = bad_inputs(tmp_path)
    write_json(bad / "z-after.json", bundle("transaction", post(None, patient("7777777777777", "After"))))
    report, output = await run_load(store_url, [bad], fail_fast=True)
    assert report.stopped and report.errors == 1, output
    assert "e-bad-transaction.json" in output
    async with fhir_client(store_url) as client:
        assert await search(client, "/Patient?family=after") == []
        assert await search(client, "/Patient?family=batch") == []


async def test_reload_updates_and_conditional_references_run_for_real(store_url, tmp_path):
    """What the workers cannot know (existing resources, conditional matches) is run on the main process."""
    data = tmp_path / "in"
    (data).mkdir()
    (data / "a.ndjson").write_text(json.dumps(patient("2900175000001", "Nd", id="nd-1")) + "\n", encoding="utf-8")
    first, _ = await run_load(store_url, [data])
    assert (first.resources, first.errors, first.redone) == (1, 0, 0)
    (data / "a.ndjson").write_text(json.dumps(patient("2900175000001", "Changed", id="nd-1")) + "\n", "utf-8")
    write_json(data / "b.json", bundle("transaction",
        post(None, observation(f"Patient?identifier={INS}|2900175000001", "conditional")),
    ))  # fmt: skip
    write_json(data / "c.json", bundle("transaction",
        post("urn:uuid:new", patient("3900175000003", "Created"), ifNoneExist=f"identifier={INS}|3900175000003"),
        post(None, observation("urn:uuid:new", "linked")),
    ))  # fmt: skip
    second, output = await run_load(store_url, [data])
    assert (second.resources, second.errors) == (4, 0), output
    assert second.redone == 2  # the update (nd-1 exists) and b.json (its conditional reference matches)
    async with fhir_client(store_url) as client:
        nd = (await client.get("/Patient/nd-1")).json()
        assert nd["meta"]["versionId"] == "2" and nd["name"][0]["family"] == "Changed"
        [obs] = await search(client, "/Observation?code:text=conditional")
        assert obs["subject"]["reference"] == "Patient/nd-1"
        [created] = await search(client, "/Patient?family=created")
        [other] = await search(client, "/Observation?code:text=linked")
        assert other["subject"]["reference"] == f"Patient/{created['id']}"
    third, output = await run_load(store_url, [data / "c.json"])  # ifNoneExist matches now: no second patient
    assert (third.errors, third.redone) == (0, 1), output
    async with fhir_client(store_url) as client:
        assert [p["id"] for p in await search(client, "/Patient?family=created")] == [created["id"]]
        observations = await search(client, "/Observation?code:text=linked")
        assert [o["subject"]["reference"] for o in observations] == [f"Patient/{created['id']}"] * 2


async def test_timestamps_are_those_of_the_write(tmp_path):
    """Prepared ahead on a worker, stamped when written: body, version and index carry the same instant."""
    url = f"sqlite:///{tmp_path / 'fhir.db'}"
    report, _ = await run_load(url, [good_inputs(tmp_path)])
    assert report.errors == 0
    store = open_store(url)
    async with store:
        versions = await store.history(HistoryQuery())
    assert len(versions) == GOOD_RESOURCES
    for version in versions:
        assert version.body is not None
        assert loads(version.body)["meta"]["lastUpdated"] == to_instant(version.last_updated)


async def test_sqlite_replays_on_the_writer_connection(tmp_path):
    """The SQLite fast path (one writer-thread call per group, temp_store=FILE while loading) is in use: if
    the store's transaction changes shape, the loader falls back to the slow generic path; this says so."""
    url = f"sqlite:///{tmp_path / 'fhir.db'}"
    store = open_store(url)
    async with store:
        loader = Loader(store, Settings(store=url))
        report = await loader.run([good_inputs(tmp_path)])
        assert report.errors == 0 and loader._sqlite

        async def temp_store(tx):
            return await tx._run(lambda conn: conn.execute("PRAGMA temp_store").fetchone()[0], tx._conn)

        assert await store.transact(temp_store) == 2  # the store's own MEMORY setting is back


# --- the command -------------------------------------------------------------------------------------


def load_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    return subprocess.run(
        [*fhir_server_command(), "load", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_load_command_with_worker_processes(tmp_path):
    good, bad = good_inputs(tmp_path), bad_inputs(tmp_path)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    done = load_command("--store", url, "--workers", "2", str(good), str(bad), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"loaded {GOOD_FILES + 4} files, {GOOD_RESOURCES + 4} resources, 4 errors in ")
    assert "resources/s" in summary
    assert done.stderr.count("error: ") == 4 and "Bundle.entry[1]" in done.stderr and "line 2" in done.stderr
    assert "load: " in done.stderr  # not a TTY: plain progress lines

    clean = load_command("--store", f"sqlite:///{tmp_path / 'clean.db'}", str(good), cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert f"{GOOD_RESOURCES} resources, 0 errors" in clean.stdout

    stop = load_command("--store", f"sqlite:///{tmp_path / 'ff.db'}", "--fail-fast", "--workers", "1", str(bad),
                        cwd=tmp_path)  # fmt: skip
    assert stop.returncode == 1 and "stopped: --fail-fast" in stop.stdout and stop.stderr.count("error: ") == 1


def test_load_command_refuses_missing_paths(tmp_path):
    done = load_command("--store", f"sqlite:///{tmp_path / 'x.db'}", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert done.returncode == 2 and "no such file or directory" in done.stderr
    (tmp_path / "notes.txt").write_text("x")
    done = load_command("--store", f"sqlite:///{tmp_path / 'x.db'}", str(tmp_path / "notes.txt"), cwd=tmp_path)
    assert done.returncode == 2 and "not a .json" in done.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("count", [3])
def test_load_command_default_store_from_environment(tmp_path, count):
    data = tmp_path / "in"
    data.mkdir()
    (data / "p.ndjson").write_text("".join(json.dumps(patient(f"19001750000{i:02d}")) + "\n" for i in range(count)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    env["FHIR_SERVER_STORE"] = f"sqlite:///{tmp_path / 'env.db'}"
    done = subprocess.run([*fhir_server_command(), "load", "--workers", "0", str(data)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{count} resources, 0 errors" in done.stdout
    assert (tmp_path / "env.db").exists()

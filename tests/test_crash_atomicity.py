"""A transaction is all or nothing, even when the process dies in the middle of it (SIGKILL, SQLite).

The real server (``fhir-server serve``) is killed while it processes a large transaction Bundle, and
``fhir-server load`` is killed part-way through a directory of transaction Bundles; after each kill the
database opens cleanly (``PRAGMA integrity_check``) and every Bundle is either fully there or absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import fhir_server_command, free_port, stop_process, wait_until_serving

from fhir_server.search.criteria import parse_criteria
from fhir_server.store import open_store

TAG = "urn:test:crash"
ENTRIES = 3000


def transaction(tag: str, count: int) -> dict:
    """``count`` entries: Patients, each with an Observation pointing at it through a urn:uuid, all tagged."""
    meta = {"tag": [{"system": TAG, "code": tag}]}
    entries = []
    for i in range(count // 2):
        full_url = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
        patient = {
            "resourceType": "Patient",
            "meta": meta,
            "identifier": [{"system": "urn:test:crash:id", "value": f"{tag}-{i}"}],
            "name": [{"family": f"Crash{i}", "given": ["Zoé"]}],
            "birthDate": "1970-01-01",
        }
        observation = {
            "resourceType": "Observation",
            "meta": meta,
            "status": "final",
            "code": {"text": "poids"},
            "subject": {"reference": full_url},
            "valueQuantity": {"value": 70.5, "unit": "kg"},
        }
        entries.append({"fullUrl": full_url, "resource": patient, "request": {"method": "POST", "url": "Patient"}})
        entries.append({"resource": observation, "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


class Server:
    def __init__(self, db: Path, cwd: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FHIR_SERVER_STORE": f"sqlite:///{db}", "FHIR_SERVER_LOAD_DEFINITIONS": "false",
               "FHIR_SERVER_MAX_BUNDLE_ENTRIES": str(ENTRIES + 10)}  # fmt: skip
        self.proc = subprocess.Popen(
            [*fhir_server_command(), "serve", "--port", str(self.port), "--auth", "off"],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_until_serving(self.base, self.proc, timeout=90):
            self.stop()
            pytest.fail("fhir-server serve did not start")

    def count(self, tag: str, type_: str = "Patient") -> int:
        r = httpx.get(f"{self.base}/{type_}", params={"_tag": f"{TAG}|{tag}", "_summary": "count"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["total"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc)


def post_transaction(base: str, body: bytes) -> int:
    r = httpx.post(base + "/", content=body, timeout=120, headers={"Content-Type": "application/fhir+json"})
    return r.status_code


def test_server_killed_during_a_transaction(tmp_path):
    db = tmp_path / "crash.db"
    server = Server(db, tmp_path)
    try:  # how long one such transaction takes here: the kills land at fractions of it
        started = time.monotonic()
        assert post_transaction(server.base, json.dumps(transaction("calibration", ENTRIES)).encode()) == 200
        took = time.monotonic() - started
    finally:
        server.stop()
    outcomes = []
    for attempt, fraction in enumerate([0.3, 0.5, 0.65, 0.8, 0.9, 0.97]):
        tag = f"server-{attempt}"
        body = json.dumps(transaction(tag, ENTRIES)).encode()
        server = Server(db, tmp_path)
        answered: list[int] = []

        def send(base=server.base, body=body, answered=answered) -> None:
            with contextlib.suppress(httpx.TransportError):  # the server died: no answer
                answered.append(post_transaction(base, body))

        client = threading.Thread(target=send)
        client.start()
        time.sleep(fraction * took)
        killed_mid_way = not answered
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        client.join(timeout=30)
        assert integrity(db) == "ok"
        after = Server(db, tmp_path)  # restarts cleanly on the same database
        try:
            patients, observations = after.count(tag), after.count(tag, "Observation")
            assert after.count("calibration") == ENTRIES // 2
        finally:
            after.stop()
        assert (patients, observations) in ((0, 0), (ENTRIES // 2, ENTRIES // 2)), (fraction, patients, observations)
        if answered:
            assert answered == [200] and patients == ENTRIES // 2
        outcomes.append((round(fraction * took, 2), killed_mid_way, patients))
    print(f"one transaction: {took:.2f} s; kills (after s, before the answer, patients found): {outcomes}")
    assert any(mid_way for _, mid_way, _ in outcomes), outcomes  # at least one kill landed before the answer


BUNDLES, PER_BUNDLE = 80, 150


def stored_resources(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return 0
    try:
        return conn.execute("SELECT count(*) FROM resource").fetchone()[0]
    except sqlite3.OperationalError:  # no schema yet
        return 0
    finally:
        conn.close()


def test_load_killed_part_way(tmp_path):
    data = tmp_path / "bundles"
    data.mkdir()
    for b in range(BUNDLES):
        (data / f"b{b:03d}.json").write_text(json.dumps(transaction(f"load-{b}", PER_BUNDLE)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    partial = []
    total = BUNDLES * PER_BUNDLE
    for attempt, threshold in enumerate([1, total // 3, total // 2]):  # kill once this much is committed
        db = tmp_path / f"load-{attempt}.db"
        proc = subprocess.Popen(
            [*fhir_server_command(), "load", "--store", f"sqlite:///{db}", "--workers", "1", str(data)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the worker processes die with it
        )
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if db.exists() and stored_resources(db) >= threshold:
                break
            time.sleep(0.02)
        running = proc.poll() is None
        if running:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert integrity(db) == "ok"
        counts = asyncio.run(bundle_counts(f"sqlite:///{db}"))
        assert set(counts) <= {0, PER_BUNDLE // 2}, counts  # every Bundle fully there or absent
        loaded = sum(1 for c in counts if c)
        if running and 0 < loaded < BUNDLES:
            partial.append((threshold, loaded))
        if not running:
            assert loaded == BUNDLES
    print("load kills (resources committed when killed, Bundles found of", BUNDLES, "):", partial)
    assert partial, "no kill landed part-way through the load"


async def bundle_counts(url: str) -> list[int]:
    store = open_store(url)
    async with store:
        counts = []
        for b in range(BUNDLES):
            patients = await store.count(parse_criteria("Patient", [("_tag", f"{TAG}|load-{b}")]))
            observations = await store.count(parse_criteria("Observation", [("_tag", f"{TAG}|load-{b}")]))
            assert patients == observations, (b, patients, observations)
            counts.append(patients)
        return counts

"""The real ``fhir-server serve`` process, spoken to over HTTP (what a user runs from the README)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fhir_server_command() -> list[str]:
    exe = shutil.which("fhir-server", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "fhir_server.cli"]


@pytest.fixture
def server(store_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    store = store_url
    port = free_port()
    env = {**os.environ, "FHIR_SERVER_STORE": store}
    proc = subprocess.Popen(
        [*fhir_server_command(), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"fhir-server serve did not start: {out[-3000:]}")
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_serve_process_create_read_search_history(server):
    base, proc = server
    headers = {"Content-Type": "application/fhir+json"}
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "2830512345678"}],
        "name": [{"family": "Lefèvre", "given": ["Zoé"]}],
    }
    created = httpx.post(f"{base}/Patient", json=body, headers=headers)
    assert created.status_code == 201
    assert created.headers["location"].startswith(f"{base}/Patient/")
    pid = created.json()["id"]
    read = httpx.get(f"{base}/Patient/{pid}")
    assert read.status_code == 200 and read.json()["name"][0]["family"] == "Lefèvre"
    history = httpx.get(f"{base}/Patient/{pid}/_history").json()
    assert history["total"] == 1
    assert proc.poll() is None


def test_serve_default_store_is_created_under_data(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    proc = subprocess.Popen(
        [*fhir_server_command(), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert (tmp_path / "data" / "fhir.db").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_help_lists_subcommands():
    out = subprocess.run([*fhir_server_command(), "--help"], capture_output=True, text=True, check=True).stdout
    assert "serve" in out
    serve_help = subprocess.run(
        [*fhir_server_command(), "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--host", "--port", "--store", "--workers"):
        assert flag in serve_help

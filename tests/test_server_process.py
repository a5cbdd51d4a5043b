"""The real ``fhir-server serve`` process, spoken to over HTTP (what a user runs from the README)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
from conftest import fhir_server_command, free_port, wait_until_serving


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
        assert wait_until_serving(f"http://127.0.0.1:{port}", proc)
        assert (tmp_path / "data" / "fhir.db").exists()
        # Auth is on by default: FHIR data needs a token; discovery does not.
        refused = httpx.get(f"http://127.0.0.1:{port}/Patient")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(f"http://127.0.0.1:{port}/.well-known/smart-configuration").status_code == 200
        token = subprocess.run(
            [*fhir_server_command(), "token", "--client", "script", "--scope", "system/*.rs", "--aud",
             f"http://127.0.0.1:{port}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        found = httpx.get(f"http://127.0.0.1:{port}/Patient", headers={"Authorization": f"Bearer {token}"})
        assert found.status_code == 200 and found.json()["resourceType"] == "Bundle"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_help_lists_subcommands():
    out = subprocess.run([*fhir_server_command(), "--help"], capture_output=True, text=True, check=True).stdout
    assert "serve" in out
    serve_help = subprocess.run(
        [*fhir_server_command(), "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--host", "--port", "--store", "--workers", "--auth"):
        assert flag in serve_help


def test_auth_off_is_refused_off_loopback(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    done = subprocess.run(
        [*fhir_server_command(), "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--auth", "off"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "loopback" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_auth_off_warns_loudly(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    proc = subprocess.Popen(
        [*fhir_server_command(), "serve", "--port", str(port), "--auth", "off"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_until_serving(f"http://127.0.0.1:{port}", proc)
        assert httpx.get(f"http://127.0.0.1:{port}/Patient").status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "authentication is OFF" in err

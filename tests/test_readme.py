"""The README's walk-through runs as written, top to bottom, against a real server with authentication on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fhir_server_command, free_port, stop_process, wait_until_serving

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- walkthrough: tests/test_readme.py runs this block -->"


SPACE_MARKER = "<!-- space walkthrough: tests/test_readme.py runs this block -->"


def walkthrough(marker: str = MARKER) -> str:
    """The shell block that follows a walk-through marker in README.md."""
    text = (REPO / "README.md").read_text()
    found = re.search(re.escape(marker) + r"\s*```sh\n(.*?)```", text, re.DOTALL)
    assert found, "README.md lost a walk-through block (or its marker)"
    return found.group(1)


def test_the_walkthrough_block_is_found():
    block = walkthrough()
    assert block.startswith("BASE=http://127.0.0.1:8080\n")
    assert "fhir-server token" in block and "fhir-server load examples/" in block


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_walkthrough_runs_literally(tmp_path: Path):
    port = free_port()
    # The README runs from the repository root: here a fresh directory holding a link to examples/.
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {
        **os.environ,
        "FHIR_SERVER_PORT": str(port),  # the server and `fhir-server token` (its audience) agree on the port
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("FHIR_SERVER_STORE", "FHIR_SERVER_AUTH", "FHIR_SERVER_AUTH_STATE", "FHIR_SERVER_BASE_URL"):
        env.pop(name, None)
    env["FHIR_SERVER_LOAD_DEFINITIONS"] = "false"
    proc = subprocess.Popen([*fhir_server_command(), "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert wait_until_serving(f"http://127.0.0.1:{port}", proc), proc.stdout.read() if proc.stdout else ""
        script = walkthrough().replace("BASE=http://127.0.0.1:8080\n", f"BASE=http://127.0.0.1:{port}\n", 1)
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, f"walk-through failed:\n{run.stderr[-3000:]}\n{run.stdout[-3000:]}"
    finally:
        stop_process(proc)
    out = run.stdout
    statuses = re.findall(r"^HTTP/1\.1 (\d{3})", out, re.MULTILINE)
    # conditional create (exists: 200), PUT as create (201), PUT with If-Match (200), $export (202), delete (204)
    assert statuses == ["200", "201", "200", "202", "204"], statuses
    assert re.search(r"^location: .*/Patient/zoe-lefevre/_history/1\r?$", out, re.MULTILINE | re.IGNORECASE)
    assert '"resourceType":"CapabilityStatement"' in out
    assert '{"status":"pass","checks":{"store":"pass"}}' in out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_space_walkthrough_runs_literally(tmp_path: Path):
    """Registry import → code by email → activation → a professional's deposit → a delegation, accepted then
    revoked on the delegate's live token → closure, the professional locked out and the status by INS."""
    port, smtp = free_port(), free_port()
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {
        **os.environ,
        "FHIR_SERVER_PORT": str(port),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FHIR_SERVER_SMTP_HOST": "127.0.0.1",  # as the README starts the server: email on, to the local mailbox
        "FHIR_SERVER_SMTP_PORT": str(smtp),
        "FHIR_SERVER_OUTBOX_POLL_SECONDS": "0.5",
        "FHIR_SERVER_LOAD_DEFINITIONS": "false",
    }
    for name in ("FHIR_SERVER_STORE", "FHIR_SERVER_AUTH", "FHIR_SERVER_AUTH_STATE", "FHIR_SERVER_BASE_URL"):
        env.pop(name, None)
    proc = subprocess.Popen([*fhir_server_command(), "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert wait_until_serving(f"http://127.0.0.1:{port}", proc), proc.stdout.read() if proc.stdout else ""
        script = walkthrough(SPACE_MARKER)
        assert script.startswith("BASE=http://127.0.0.1:8080\nSMTP=8025 ")
        script = script.replace(
            "BASE=http://127.0.0.1:8080\nSMTP=8025 ", f"BASE=http://127.0.0.1:{port}\nSMTP={smtp} ", 1
        )
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, f"walk-through failed:\n{run.stderr[-3000:]}\n{run.stdout[-3000:]}"
    finally:
        stop_process(proc)
    out = run.stdout
    assert '{"name":"created","valueInteger":2}' in out  # the registry import
    assert '"total":2' in out  # Camille's token reaches her record and Jade's (she represents her)
    counted = f'"total":1,"link":[{{"relation":"self","url":"http://127.0.0.1:{port}/DocumentReference'
    assert out.count(counted) == 2  # the deposit, by Camille then by Paul
    assert '"status":"accepted"' in out and '"valueCode":"revoked"' in out
    # Paul's live token after the revocation, then the professional after the closure: nothing
    assert re.findall(r"^HTTP (\d{3})$", out, re.MULTILINE) == ["404", "404"]
    assert '"valueCode":"closed"' in out and '"active":false' in out

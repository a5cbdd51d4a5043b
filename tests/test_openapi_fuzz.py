"""Fuzzing the real ``fhir-server serve`` through its own OpenAPI document (schemathesis + Hypothesis).

Every operation of a subset of resource types that together cover every interaction kind (Patient has all
of them plus ``$everything``, ``$export`` and compartment search; Observation, DocumentReference, Binary,
Bundle; the system level: batch/transaction, system search and history, ``$export`` and its status;
``Group/[id]/$export``) gets its schema examples, then a few positive and a few negative requests
(schemathesis' generators), with authorization off and then on with a ``system/*.cruds`` token. The
checks: no 5xx, ever; every 4xx is a JSON OperationOutcome; every response matches the document's
response schemas. Deterministic (Hypothesis derandomized, no example database), bounded: about 1,500
requests, well under a minute on the development machines. Every bug it found has a plain regression test
(tests/test_openapi.py); docs/openapi.md tells how to run it wider (``st run``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from conftest import fhir_server_command, free_port, stop_process, wait_until_serving
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

TYPES = ("System", "Patient", "Observation", "DocumentReference", "Binary", "Bundle")
EXTRA_OPERATIONS = ("export-Group", "export-Group-post")  # Group/[id]/$export, without the rest of Group
# Generated cases per operation, positive and negative each (plus the schema's own examples): auth off gets
# more, auth on re-runs the same surface behind the token checks.
PER_MODE = {"auth-off": 3, "auth-on": 2}
FHIR_JSON = "application/fhir+json"

# What the schema's examples point at (id "example", version 1): reads, vreads, updates and operations on
# existing resources, not only on unknown ids.
SEED = [
    {"resourceType": "Patient", "id": "example", "name": [{"family": "Exemple", "given": ["Zoé"]}],
     "birthDate": "1983-05-12"},
    {"resourceType": "Observation", "id": "example", "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
     "subject": {"reference": "Patient/example"}, "effectiveDateTime": "2024-03-01",
     "valueQuantity": {"value": 61.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}},
    {"resourceType": "Binary", "id": "example", "contentType": "text/plain", "data": "Ym9uam91cg==",
     "securityContext": {"reference": "DocumentReference/example"}},
    {"resourceType": "DocumentReference", "id": "example", "status": "current",
     "subject": {"reference": "Patient/example"},
     "content": [{"attachment": {"url": "Binary/example", "contentType": "text/plain"}}]},
    {"resourceType": "Bundle", "id": "example", "type": "collection",
     "entry": [{"fullUrl": "urn:uuid:6f1d7a52-3c4e-4b8e-9a43-0d2c9f5b1e77",
                "resource": {"resourceType": "Patient", "active": True}}]},
    {"resourceType": "Group", "id": "example", "type": "person", "actual": True,
     "member": [{"entity": {"reference": "Patient/example"}}]},
]  # fmt: skip


class Server:
    def __init__(self, base: str, headers: dict[str, str], log: Path, per_mode: int) -> None:
        self.base = base
        self.headers = headers
        self.log = log
        self.per_mode = per_mode


@pytest.fixture(scope="module", params=["auth-off", "auth-on"])
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``fhir-server serve`` on SQLite (the HTTP surface is what is fuzzed; both stores pass the same
    conformance suite), seeded; auth on: a ``system/*.cruds`` token from ``fhir-server token``."""
    auth = request.param == "auth-on"
    workdir = tmp_path_factory.mktemp(request.param)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")},
        "FHIR_SERVER_STORE": f"sqlite:///{workdir / 'fhir.db'}",
        "FHIR_SERVER_PORT": str(port),  # the audience `fhir-server token` writes into the token
        "FHIR_SERVER_LOAD_DEFINITIONS": "false",
        "FHIR_SERVER_VALIDATION_PROCESSES": "0",
        "FHIR_SERVER_EXPORT_DIR": str(workdir / "export"),
    }
    log = workdir / "server.log"
    with open(log, "wb") as out:  # a file, not a pipe: 5xx tracebacks must never block the server
        proc = subprocess.Popen(
            [*fhir_server_command(), "serve", "--port", str(port), "--auth", "on" if auth else "off"],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_serving(base, proc):
            pytest.fail(f"fhir-server serve did not start: {log.read_text()[-3000:]}")
        headers: dict[str, str] = {}
        if auth:
            minted = subprocess.run(
                [*fhir_server_command(), "token", "--client", "fuzz", "--scope", "system/*.cruds"],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            headers["Authorization"] = f"Bearer {minted.stdout.strip()}"
            assert httpx.get(f"{base}/Patient", headers=headers).status_code == 200
            assert httpx.get(f"{base}/Patient").status_code == 401
        for resource in SEED:
            url = f"{base}/{resource['resourceType']}/{resource['id']}"
            r = httpx.put(url, json=resource, headers={**headers, "Content-Type": FHIR_JSON})
            assert r.status_code == 201, r.text
        yield Server(base, headers, log, PER_MODE[request.param])
    finally:
        stop_process(proc)


def _problems(case, response) -> list[str]:
    """What is wrong with one answer: a 5xx; a 4xx that is not a JSON OperationOutcome; a schema mismatch."""
    found = []
    status = response.status_code
    if status >= 500:
        found.append(f"server error {status}")
    elif status >= 400:
        media = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()  # header: list of values
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if media not in (FHIR_JSON, "application/json") or not isinstance(body, dict):
            found.append(f"{status} is not JSON ({media!r}): {response.content[:200]!r}")
        elif body.get("resourceType") != "OperationOutcome" or not body.get("issue"):
            found.append(f"{status} is not an OperationOutcome: {response.content[:200]!r}")
    if not found and status != 304:
        try:
            case.validate_response(response, checks=[response_schema_conformance])
        except Exception as exc:  # schemathesis' FailureGroup: the message says what does not match
            found.append(f"response does not match the document: {str(exc)[:500]}")
    return found


QUIET = {"database": None, "deadline": None, "suppress_health_check": list(HealthCheck), "derandomize": True}


def _examples(operation) -> list:
    """The schema's examples of the operation (ids ``example`` and ``1``, example bodies), one case each."""
    try:
        strategies = list(operation.get_strategies_from_examples(fill_missing=True))
    except Exception:  # an operation without usable examples: generated data only
        return []
    cases: list = []
    for strategy in strategies:

        @settings(max_examples=1, phases=[Phase.generate], **QUIET)
        @given(case=strategy)
        def take(case) -> None:
            cases.append(case)

        take()
    return cases


def _fuzz(server: Server, operation, per_mode: int) -> tuple[int, list[str]]:
    """The examples, then ``per_mode`` positive and ``per_mode`` negative cases (about: Hypothesis stops early
    when an operation has fewer distinct inputs)."""
    sent = 0
    failures: list[str] = []

    def check(case) -> None:
        nonlocal sent
        response = case.call(base_url=server.base, headers=server.headers, timeout=30)
        sent += 1
        for problem in _problems(case, response):
            failures.append(f"{operation.label}: {problem}\n    {case.as_curl_command(headers=server.headers)}")

    for case in _examples(operation):
        check(case)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        # No shrinking: every failure is reported as found, with its curl command.
        @settings(max_examples=per_mode, phases=[Phase.generate], **QUIET)
        @given(case=operation.as_strategy(mode))
        def run(case) -> None:
            check(case)

        with contextlib.suppress(Unsatisfiable):  # nothing here can be made invalid (negative mode): no case
            run()
    return sent, failures


def test_fuzz_every_operation_through_the_openapi_document(fuzzed: Server):
    schema = schemathesis.openapi.from_url(f"{fuzzed.base}/openapi.json", headers=fuzzed.headers)
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().tags and (result.ok().tags[0] in TYPES or result.ok().definition.raw.get("operationId")
                                 in EXTRA_OPERATIONS)
    ]  # fmt: skip
    labels = {op.label for op in operations}
    # Every interaction kind is in the subset.
    for label in ("GET /Patient/{id}", "GET /Patient/{id}/_history/{vid}", "PUT /Patient/{id}", "PUT /Patient",
                  "PATCH /Patient/{id}", "PATCH /Patient", "DELETE /Patient/{id}", "DELETE /Patient",
                  "GET /Patient/{id}/_history", "GET /Patient/_history", "POST /Patient", "GET /Patient",
                  "POST /Patient/_search", "GET /Patient/{id}/{type}", "POST /Patient/$validate",
                  "GET /Patient/{id}/$meta", "POST /Patient/{id}/$meta-add", "GET /Patient/{id}/$everything",
                  "GET /Patient/$export", "GET /Group/{id}/$export", "POST /", "GET /", "POST /_search",
                  "GET /_history", "GET /metadata", "GET /$export", "GET /$export-status/{job}",
                  "GET /Binary/{id}", "POST /Bundle", "POST /DocumentReference"):  # fmt: skip
        assert label in labels, label
    sent = 0
    failures: list[str] = []
    for operation in operations:
        count, found = _fuzz(fuzzed, operation, fuzzed.per_mode)
        sent += count
        failures += found
    print(f"fuzzed {len(operations)} operations with {sent} requests")
    assert sent >= len(operations) * fuzzed.per_mode
    log_tail = fuzzed.log.read_text(errors="replace")[-4000:]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:40]) + f"\n--- server log:\n{log_tail}"

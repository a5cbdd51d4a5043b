#!/usr/bin/env python3
"""What SMART authorization costs a read: ``GET /Patient/{id}`` with auth off, with a ``system/*.rs``
token (verified once per token, then cached: the read fast path still serves it), and with a
``patient/*.rs`` token of that patient (confined: the full route checks compartment membership in the
store query). One server per mode on a fresh SQLite database, wrk as in rest_throughput.py.

    .venv/bin/python bench/auth_overhead.py [--duration 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rest_throughput import (
    FHIR_JSON,
    READ_SCRIPT,
    Processes,
    WrkSettings,
    compact,
    http,
    patient,
    run_wrk,
    start_ours,
)


def mint(store: str, base: str, scope: str, patient_id: str | None = None) -> str:
    exe = Path(sys.executable).parent / "fhir-server"
    cmd = [str(exe), "token", "--client", "bench", "--scope", scope, "--store", store, "--aud", base]
    if patient_id:
        cmd += ["--patient", patient_id]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def measure(procs: Processes, tmp: Path, mode: str, settings: WrkSettings) -> dict:
    store = f"sqlite:///{tmp / mode}.db"
    proc, base = start_ours(procs, tmp, store, 120, auth=mode != "off")
    headers: dict[str, str] = {}
    if mode != "off":
        headers["Authorization"] = f"Bearer {mint(store, base, 'system/*.cruds')}"
    body = compact(patient("278031425012345", "IPP-0000001"))
    status, answer_headers, _ = http("POST", f"{base}/Patient", body, {"Content-Type": FHIR_JSON, **headers})
    assert status == 201, status
    id_ = answer_headers["Location"].split("/Patient/", 1)[1].split("/", 1)[0]
    if mode == "patient":
        headers["Authorization"] = f"Bearer {mint(store, base, 'patient/*.rs', id_)}"
    status, _, _ = http("GET", f"{base}/Patient/{id_}", headers={"Accept": FHIR_JSON, **headers})
    assert status == 200, status
    wrk_headers = [f"{k}: {v}" for k, v in headers.items()]
    run_wrk(settings, READ_SCRIPT, f"{base}/Patient/{id_}", duration=2, headers=wrk_headers)  # warm-up
    result = run_wrk(settings, READ_SCRIPT, f"{base}/Patient/{id_}", watch=[proc], headers=wrk_headers)
    procs.stop_all()
    return {"mode": mode, "rps": result["requests_per_s"], "p99_ms": result["latency_us"]["p99"] / 1000,
            "errors": result["errors"], "cpu_us_per_request": result.get("server_cpu_us_per_request")}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    settings = WrkSettings(args.threads, args.connections, args.duration, "2s")
    rows = []
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="fhir-auth-bench-") as tmp:
            for mode in ("off", "system", "patient"):
                rows.append(measure(procs, Path(tmp), mode, settings))
    finally:
        procs.stop_all()
    print(f"{'GET /Patient/{id}':28s} {'req/s':>8s} {'p99 ms':>8s} {'CPU µs/req':>11s}  errors")
    for row in rows:
        cpu = f"{row['cpu_us_per_request']:.0f}" if row["cpu_us_per_request"] else "?"
        label = {"off": "auth off", "system": "system/*.rs token", "patient": "patient/*.rs token (own)"}
        print(f"{label[row['mode']]:28s} {row['rps']:8.0f} {row['p99_ms']:8.2f} {cpu:>11s}  {row['errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

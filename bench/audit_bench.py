#!/usr/bin/env python3
"""What the audit trail costs (issue 11's benchmark): a professional's read with its AuditEvent committed before
the answer, against the same read with the trail off, on the policy corpus.

1. Starts two ``fhir-server serve --workers 1 --auth on`` on the same corpus (``bench/policy_corpus.py``): one
   with ``FHIR_SERVER_AUDIT=false``, one with the trail on (default), and mints the médecin's token (the same
   token works on both: same auth state).
2. **Reads**: wrk on ``GET /DocumentReference/<id>`` (one document of ``bench-200``) and over ``--spread``
   documents of distinct patients (``bench/wrk_paths.lua``: each read traces another patient, and the first
   access of the day to each notifies them), the two servers alternated ``--rounds`` times: requests/s and
   server CPU per request; ratio = audited ÷ unaudited requests/s (target ≥ 0.5).
3. **Searches**: ``GET /DocumentReference?patient=Patient/bench-200&_count=50``, sequential requests
   alternated between the servers: p50/p95 ms.
4. **Where the time goes**: the pieces of one traced read measured in this process, on a scratch SQLite
   store — building the AuditEvent, its index entries and JSON, the unit of work that commits it alone, and
   per event when 32 arrive together (the store's group commit).
5. Prints a table and writes ``bench/results/audit-<UTC timestamp>.json``.

Usage (from the repository root)::

    .venv/bin/python bench/policy_corpus.py --store sqlite:////tmp/policy_corpus/policy.db   # once
    .venv/bin/python bench/audit_bench.py --store sqlite:////tmp/policy_corpus/policy.db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_bench import PATHS_SCRIPT, PS_SCOPE, mint, start_server, wait_idle
from rest_throughput import READ_SCRIPT, Processes, WrkSettings, _terminate, machine_facts, run_wrk
from search_bench import percentile

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
RATIO_TARGET = 0.5
SERVERS = ("unaudited", "audited")


async def pieces(repeat: int = 2000) -> dict:
    """µs of each piece of a traced read, in this process."""
    from fhir_server.audit.events import Access, Actor, build_audit_event
    from fhir_server.fhirjson import dumps
    from fhir_server.instant import new_id, now_us
    from fhir_server.interactions.crud import create_in
    from fhir_server.policy.professional import Professional
    from fhir_server.search.indexing import index_entries
    from fhir_server.security.principal import Principal
    from fhir_server.store import open_store

    ps = Professional("810000000001", "10", "Practitioner/dr", "PractitionerRole/dr-role", "Organization/o")
    actor = Actor.from_principal(Principal.from_claims({"ps": ps.to_claim(), "fhirUser": "PractitionerRole/dr-role",
                                                        "client_id": "bench", "sub": "dr", "jti": "j",
                                                        "scope": PS_SCOPE}))  # fmt: skip

    def event() -> dict:
        return build_audit_event(Access(actor, "read", "http://127.0.0.1:8080", patients=["bench-200"],
                                        resources=[f"DocumentReference/{new_id()}/_history/1"],
                                        address="127.0.0.1", started=now_us()))  # fmt: skip

    def timed(fn) -> float:
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - start) / repeat * 1e6

    sample = event()
    out = {"build_us": timed(event), "index_entries_us": timed(lambda: index_entries(sample)),
           "json_us": timed(lambda: dumps(sample)), "index_entries_per_event": len(index_entries(sample))}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/scratch.db")
        await store.start()
        try:
            start = time.perf_counter()
            for _ in range(repeat // 4):
                body = event()
                await store.transact(lambda tx, body=body: create_in(tx, "AuditEvent", body))
            out["commit_alone_us"] = (time.perf_counter() - start) / (repeat // 4) * 1e6
            start = time.perf_counter()
            for _ in range(repeat // 32):
                bodies = [event() for _ in range(32)]
                await asyncio.gather(*(store.transact(lambda tx, b=b: create_in(tx, "AuditEvent", b)) for b in bodies))
            out["commit_in_groups_of_32_us"] = (time.perf_counter() - start) / (repeat // 32 * 32) * 1e6
        finally:
            await store.close()
    return {k: round(v, 1) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="sqlite:////tmp/policy_corpus/policy.db")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", default="30s")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--spread", type=int, default=1000)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup-requests", type=int, default=20)
    p.add_argument("--lifetime", type=int, default=3600)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    from fhir_server.store import sqlite_path

    path = Path(sqlite_path(args.store)).resolve()
    facts_file = path.with_name(path.name + ".policy.json")
    if not path.exists() or not facts_file.exists():
        p.error(f"{path} (and {facts_file.name}) missing: build it with bench/policy_corpus.py")
    if shutil.which("wrk") is None:
        p.error("wrk is not installed (apt-get install -y wrk)")
    facts = json.loads(facts_file.read_text())
    signal.signal(signal.SIGTERM, _terminate)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    settings = WrkSettings(args.threads, args.connections, args.duration, args.timeout)
    store = f"sqlite:///{path}"
    doc: dict = {"benchmark": "audit", "timestamp": stamp, "machine": machine_facts(), "wrk": settings.describe(),
                 "settings": {k: str(v) for k, v in vars(args).items()}, "target_ratio": RATIO_TARGET}  # fmt: skip
    print("pieces of one traced read (this process):", flush=True)
    doc["pieces"] = asyncio.run(pieces())
    print("  " + ", ".join(f"{k} {v}" for k, v in doc["pieces"].items()), flush=True)
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="fhir-audit-bench-") as tmp_name:
            servers = {}
            for name in SERVERS:
                env = {"FHIR_SERVER_AUDIT": "true" if name == "audited" else "false"}
                servers[name] = start_server(procs, store, args.results_dir / f"audit-{stamp}-{name}.log", None,
                                             timeout=600, name=name, env_extra=env)  # fmt: skip
            ps = facts["professionals"]["medecin"]["idNatPs"]
            # the same professional, one token per server (a token's audience is its server's base URL)
            tokens = {n: mint(store, servers[n][1], PS_SCOPE, args.lifetime, ps)[0] for n in SERVERS}
            doc["reads"] = read_runs(args, settings, servers, tokens, facts, Path(tmp_name))
            doc["searches"] = search_runs(args, servers, tokens, facts)
    finally:
        procs.stop_all()
    out = args.results_dir / f"audit-{stamp}.json"
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print("\nreads (median req/s, server µs CPU/request):")
    for variant, r in doc["reads"].items():
        print(f"  {variant:<12} unaudited {r['rps']['unaudited']:8,.0f} ({r['cpu_us']['unaudited']:5,.0f} µs)   "
              f"audited {r['rps']['audited']:8,.0f} ({r['cpu_us']['audited']:5,.0f} µs)   ratio {r['ratio']:.2f} "
              f"(target ≥ {RATIO_TARGET}: {'met' if r['target_met'] else 'MISSED'})")  # fmt: skip
    print("searches (ms):")
    for name, s in doc["searches"].items():
        print(f"  {name:<9} p50 {s['p50_ms']:.1f}  p95 {s['p95_ms']:.1f}  p99 {s['p99_ms']:.1f}")
    print(f"results: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


def read_runs(args, settings: WrkSettings, servers: dict, tokens: dict, facts: dict, tmp: Path) -> dict:
    """wrk on each server in turn, ``--rounds`` times, with its own token."""
    out: dict = {}
    paths = tmp / "paths.txt"
    targets = facts["read_targets"][: args.spread]
    paths.write_text("".join(f"/DocumentReference/{t['document']}\n" for t in targets))
    for variant, script, script_args in (("one_document", READ_SCRIPT, []), ("spread", PATHS_SCRIPT, [str(paths)])):
        runs: dict[str, list[dict]] = {s: [] for s in SERVERS}

        def one(name: str, measured: bool, variant=variant, script=script, script_args=script_args, runs=runs):
            proc, base = servers[name]
            target = f"{base}/DocumentReference/{facts['read_document']}" if variant == "one_document" else base
            headers = [f"Authorization: Bearer {tokens[name]}"]
            if not measured:
                run_wrk(settings, script, target, script_args=script_args, duration=args.warmup, headers=headers)
                wait_idle(proc)
                return
            result = run_wrk(settings, script, target, script_args=script_args, watch=[proc], headers=headers)
            result.pop("wrk_stdout", None)
            result["drained_s"] = round(wait_idle(proc), 1)
            runs[name].append(result)
            print(f"  read {variant:<12} {name:<9}: {result['requests_per_s']:8,.0f} req/s, "
                  f"{result.get('server_cpu_us_per_request', 0):6,.0f} µs CPU/req, p99 "
                  f"{result['latency_us']['p99'] / 1000:6.2f} ms, errors {sum(result['errors'].values())}",
                  flush=True)  # fmt: skip

        for name in SERVERS:
            one(name, measured=False)
        for _ in range(args.rounds):
            for name in SERVERS:
                one(name, measured=True)
        rps = {n: statistics.median(r["requests_per_s"] for r in runs[n]) for n in SERVERS}
        cpu = {
            n: statistics.median(r.get("server_cpu_us_per_request") or float("nan") for r in runs[n]) for n in SERVERS
        }
        out[variant] = {"runs": runs, "rps": rps, "cpu_us": cpu, "ratio": rps["audited"] / rps["unaudited"],
                        "target_met": rps["audited"] / rps["unaudited"] >= RATIO_TARGET}  # fmt: skip
    return out


def search_runs(args, servers: dict, tokens: dict, facts: dict) -> dict:
    url = f"/DocumentReference?patient=Patient/{facts['bench_patient']}&_count=50"
    clients = {n: httpx.Client(base_url=servers[n][1], headers={"Authorization": f"Bearer {tokens[n]}"}, timeout=60)
               for n in SERVERS}  # fmt: skip
    times: dict[str, list[float]] = {n: [] for n in SERVERS}
    try:
        for i in range(args.warmup_requests + args.requests):
            for name in SERVERS:
                start = time.perf_counter()
                r = clients[name].get(url)
                elapsed = (time.perf_counter() - start) * 1000
                assert r.status_code == 200, r.text[:300]
                if i >= args.warmup_requests:
                    times[name].append(elapsed)
    finally:
        for c in clients.values():
            c.close()
    ranked = {n: sorted(t) for n, t in times.items()}  # percentile() reads ranks: sorted values
    return {n: {"p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95), "p99_ms": percentile(t, 99)}
            for n, t in ranked.items()}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

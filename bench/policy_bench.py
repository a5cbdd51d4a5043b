#!/usr/bin/env python3
"""What the Mon espace santé access policy costs: a professional's token against a ``system/`` token on the same
reads and searches, same server process, same run (issue 10's benchmark).

Corpus: ``bench/policy_corpus.py`` (10,000 patients x 20 DocumentReferences with Consents, patient ``bench-200``
with 200 documents; its ``<db>.policy.json`` names the professionals and documents used here).

1. Starts ``fhir-server serve --workers 1 --auth on`` on the corpus (its own process group), waits for
   ``/metadata``, and mints real signed tokens with ``fhir-server token`` against the server's auth state:
   ``system/*.rs``; the bench's médecin and pharmacien with ``--ps IDNATPS --scope 'user/*.rs
   user/DocumentReference.rs'`` (the authorization server resolves the PS in the store's directory, adds the
   ``ps`` claim and narrows the document scope to the habilitation matrix; the granted scope is recorded).
2. Checks what each caller sees (the read answers 200; the search totals equal what the corpus builder
   computed from the matrix, the masks and the authorship).
3. **Reads**: wrk (``-t2 -c32 -d10s`` by default) on ``GET /DocumentReference/<id>`` of a document of
   ``bench-200`` (authorised for the médecin) with each token, alternated ``--rounds`` times (system, PS,
   system, PS…): requests/s, latency, server CPU µs per request; overhead = 1 - PS req/s ÷ system req/s
   (target ≤ 30 %), and the same from CPU per request. Then the same over ``--spread`` documents of different
   patients who authorised the médecin (``bench/wrk_paths.lua``): every read tests another patient's Consents.
4. **Searches**: ``GET /DocumentReference?patient=Patient/bench-200&_count=200`` (and ``_count=50``, and a
   random authorised patient's 20 documents), sequential requests over one keep-alive connection per caller
   (httpx), the callers interleaved request by request (so a burst of other load on the machine hits them
   alike): p50/p95/p99/max ms and the server's main-thread CPU per request (``/proc/<pid>/task/<pid>/schedstat``,
   nanoseconds). Target: PS p95 ≤ 20 ms.
5. ``--explain``: the SQL the SQLite store runs for the médecin's search (compiled in this process with the
   server's own code from the token's claims), ``EXPLAIN QUERY PLAN``, and SQLite-only timings of the count and
   page statements, with and without the policy conditions.
6. Prints a table and writes ``bench/results/policy-<UTC timestamp>.json``.

The cores are shared with everything else on the machine: the report gives the machine's CPU use during each
run; compare CPU per request when req/s look disturbed, and re-run.

Usage (from the repository root)::

    .venv/bin/python bench/policy_corpus.py --store sqlite:////tmp/policy_corpus/policy.db   # once, ~5-10 min
    .venv/bin/python bench/policy_bench.py --store sqlite:////tmp/policy_corpus/policy.db
    .venv/bin/python bench/policy_bench.py --store … --skip-reads --explain
    .venv/bin/python bench/policy_bench.py --store … --server-src /tmp/snapshot   # a patched copy of the package
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rest_throughput import (
    PROFILE_RATE,
    READ_SCRIPT,
    Processes,
    WrkSettings,
    _terminate,
    free_port,
    machine_busy_jiffies,
    machine_facts,
    py_spy,
    run_wrk,
    summarize_profile,
    wait_ready,
)
from search_bench import percentile

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PATHS_SCRIPT = REPO / "bench" / "wrk_paths.lua"
FHIR_JSON = "application/fhir+json"
READ_OVERHEAD_TARGET = 0.30
SEARCH_P95_TARGET_MS = 20.0
PS_SCOPE = "user/*.rs user/DocumentReference.rs"
CALLERS = ("system", "medecin", "pharmacien")
#: the read's callers: the fast path (system/*.rs); a system token confined by the médecin's document criteria
#: (the full read route and its visibility query, without the policy); the médecin
READERS = ("system", "system_confined", "medecin")
CONFINED_SCOPE = "system/DocumentReference.rs?type:not=ATTEST-RESID"


# --- the server and its tokens --------------------------------------------------------------------------------
def start_server(procs: Processes, store: str, log: Path, src: Path | None, timeout: float, name: str = "server",
                 env_extra: dict[str, str] | None = None):  # fmt: skip
    port = free_port()
    exe = Path(sys.executable).parent / "fhir-server"  # a console script: the cwd is not on sys.path
    cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--store", store, "--workers", "1",
           "--auth", "on", "--log-level", "warning"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")} | (env_extra or {})
    if src is not None:  # a copy of the package (an experiment) ahead of the editable install
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src.resolve()), env.get("PYTHONPATH")]))
    proc = procs.start(name, cmd, log=log, env=env)
    base = f"http://127.0.0.1:{port}"
    waited = wait_ready(f"{base}/metadata", proc, timeout)
    print(f"server ready in {waited:.1f}s (pid {proc.popen.pid}, port {port}, auth on, 1 worker)", flush=True)
    return proc, base


def mint(store: str, base: str, scope: str, lifetime: int, id_nat_ps: str | None = None) -> tuple[str, str]:
    """(token, granted scope) from ``fhir-server token``, signed with the server's keys."""
    exe = Path(sys.executable).parent / "fhir-server"
    cmd = [str(exe), "token", "--client", "bench", "--scope", scope, "--store", store, "--aud", base,
           "--lifetime", str(lifetime)]  # fmt: skip
    if id_nat_ps:
        cmd += ["--ps", id_nat_ps]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fhir-server token failed: {done.stderr.strip()}")
    granted = next((ln.split(":", 1)[1].strip() for ln in done.stderr.splitlines() if ln.startswith("granted")), scope)
    return done.stdout.strip(), granted


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def main_thread_cpu_ns(pid: int) -> int:
    """CPU time of the server's main thread (event loop, SQLite reads), nanoseconds."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0])
    except OSError:
        return 0


def wait_idle(proc, limit: float = 300.0) -> float:
    """Wait until the server stops working off requests a stopped wrk left in flight (slow ones queue up)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = proc.cpu_seconds()
        time.sleep(0.5)
        if proc.cpu_seconds() - before < 0.02:
            break
    return time.monotonic() - start


# --- checks ------------------------------------------------------------------------------------------------------
def check_visibility(base: str, headers: dict[str, dict], facts: dict) -> dict:
    """What each caller sees of bench-200 and of the read document, against the corpus builder's expectations."""
    out: dict = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        for caller, h in headers.items():
            read = client.get(f"/DocumentReference/{facts['read_document']}", headers=h)
            search = client.get(f"/DocumentReference?patient=Patient/{facts['bench_patient']}&_count=200", headers=h)
            total = search.json().get("total") if search.status_code == 200 else None
            expected = facts["bench_visible"][caller]
            out[caller] = {"read_status": read.status_code, "search_status": search.status_code, "total": total,
                           "expected_total": expected, "ok": read.status_code == 200 and total == expected}  # fmt: skip
            print(f"  {caller:<10} read {read.status_code}, bench-200 search total {total} (expected {expected})"
                  f"{'' if out[caller]['ok'] else '  MISMATCH'}", flush=True)  # fmt: skip
    return out


# --- reads (wrk) -------------------------------------------------------------------------------------------------
def read_runs(args, settings: WrkSettings, base: str, server, tokens: dict, facts: dict, tmp: Path, stamp: str) -> dict:
    out: dict = {"one_document": {}, "spread": {}}
    url = f"{base}/DocumentReference/{facts['read_document']}"
    paths_file = tmp / "paths.txt"
    targets = facts["read_targets"][: args.spread]
    paths_file.write_text("".join(f"/DocumentReference/{t['document']}\n" for t in targets))
    variants = [("one_document", READ_SCRIPT, url, [])]
    if args.spread > 1 and targets:
        variants.append(("spread", PATHS_SCRIPT, base, [str(paths_file)]))
    for variant, script, target, script_args in variants:
        label = "one document" if variant == "one_document" else f"{len(targets)} docs of {len(targets)} patients"
        for caller in READERS:
            headers = [f"Authorization: Bearer {tokens[caller]}"]
            run_wrk(settings, script, target, script_args=script_args, duration=args.warmup, headers=headers)
            wait_idle(server)
        for round_ in range(args.rounds):
            for caller in READERS:
                headers = [f"Authorization: Bearer {tokens[caller]}"]
                profile = None
                if args.profile and caller == "medecin" and round_ == 0:
                    profile = args.results_dir / f"policy-{stamp}-read-{variant}-{caller}.collapsed"
                result = run_wrk(settings, script, target, script_args=script_args, watch=[server], headers=headers,
                                 profile=profile, profile_pid=server.popen.pid)  # fmt: skip
                result.pop("wrk_stdout", None)
                result["drained_s"] = round(wait_idle(server), 1)  # answers still owed when wrk stopped
                out[variant].setdefault(caller, []).append(result)
                cpu = result["cpu_percent_of_one_core"]
                print(f"  read, {label}, {caller:<8} round {round_ + 1}: {result['requests_per_s']:8,.0f} req/s, "
                      f"{result.get('server_cpu_us_per_request', 0):6,.0f} µs CPU/req, p99 "
                      f"{result['latency_us']['p99'] / 1000:6.2f} ms, errors {sum(result['errors'].values())}; "
                      f"CPU % of one core: server {cpu.get('server', 0):.0f}, wrk {cpu.get('wrk', 0):.0f}, "
                      f"machine {cpu.get('machine', 0):.0f}", flush=True)  # fmt: skip
        runs = out[variant]
        rps = {c: statistics.median(r["requests_per_s"] for r in runs[c]) for c in READERS}
        cpu = {
            c: statistics.median(r.get("server_cpu_us_per_request") or float("nan") for r in runs[c]) for c in READERS
        }
        pairs = [
            1 - p["requests_per_s"] / s["requests_per_s"] if s["requests_per_s"] else None
            for s, p in zip(runs["system"], runs["medecin"], strict=True)
        ]
        out[variant]["summary"] = {
            "label": label,
            "system_rps": rps["system"], "medecin_rps": rps["medecin"],
            "system_cpu_us": cpu["system"], "medecin_cpu_us": cpu["medecin"],
            "system_confined_rps": rps["system_confined"], "system_confined_cpu_us": cpu["system_confined"],
            "overhead_rps": 1 - rps["medecin"] / rps["system"],
            "overhead_rps_per_round": pairs,
            "overhead_cpu": 1 - cpu["system"] / cpu["medecin"],
            "target": READ_OVERHEAD_TARGET,
            "target_met": 1 - rps["medecin"] / rps["system"] <= READ_OVERHEAD_TARGET,
        }  # fmt: skip
    return out


# --- searches (httpx, sequential, callers interleaved) --------------------------------------------------------------
def first_reads(args, base: str, server, tokens: dict, facts: dict) -> dict:
    """Reads of documents nobody read since the server started, one by one: the store's caches (the current
    version, a professional's visibility verdict) are cold, as on a first consultation. bench-200's documents
    split in two halves, the system token reading one and the médecin the other (both cold), then the médecin
    reading its half again (warm). Latency p50 and server CPU per read."""
    headers = {c: {"Accept": FHIR_JSON, "Authorization": f"Bearer {tokens[c]}"} for c in ("system", "medecin")}
    with httpx.Client(base_url=base, timeout=args.request_timeout) as client:
        found = client.get(f"/DocumentReference?patient=Patient/{facts['bench_patient']}&_count=200&_elements=id",
                           headers=headers["system"]).json()  # fmt: skip
        ids = sorted(e["resource"]["id"] for e in found.get("entry") or ())
        halves = {"system": ids[0::2], "medecin": ids[1::2]}
        out = {}
        for label, caller in (("system_cold", "system"), ("medecin_cold", "medecin"), ("medecin_warm", "medecin")):
            samples, statuses = [], Counter()
            for id_ in halves[caller]:
                cpu0, t0 = main_thread_cpu_ns(server.popen.pid), time.perf_counter()
                r = client.get(f"/DocumentReference/{id_}", headers=headers[caller])
                samples.append(((time.perf_counter() - t0) * 1000, main_thread_cpu_ns(server.popen.pid) - cpu0))
                statuses[r.status_code] += 1
            ms = sorted(m for m, _ in samples)
            out[label] = {"reads": len(samples), "statuses": dict(statuses), "p50_ms": statistics.median(ms),
                          "cpu_us_per_read": sum(c for _, c in samples) / len(samples) / 1000}  # fmt: skip
            r = out[label]
            print(f"  first reads, {label:<13} {r['reads']} reads {dict(statuses)}: p50 {r['p50_ms']:.2f} ms, "
                  f"{r['cpu_us_per_read']:.0f} µs CPU/read", flush=True)  # fmt: skip
    return out


def search_runs(args, base: str, server, tokens: dict, facts: dict, stamp: str) -> list[dict]:
    bench = facts["bench_patient"]
    rng = random.Random(args.seed)
    others = [t["patient"] for t in facts["read_targets"]]
    n = args.warmup_requests + args.requests
    shapes = [
        ("bench200_count200", f"DocumentReference?patient=Patient/{bench}&_count=200", CALLERS, None),
        ("bench200_count50", f"DocumentReference?patient=Patient/{bench}&_count=50", CALLERS, None),
    ]
    if others:
        picks = [rng.choice(others) for _ in range(n)]
        shapes.append(("authorised_patient_20", "DocumentReference?patient=Patient/{patient}", ("system", "medecin"),
                       picks))  # fmt: skip
    results = []
    clients = {c: httpx.Client(base_url=base, timeout=args.request_timeout,
                               headers={"Accept": FHIR_JSON, "Authorization": f"Bearer {tokens[c]}"})
               for c in CALLERS}  # fmt: skip
    pid = server.popen.pid
    try:
        for name, template, callers, picks in shapes:
            if args.only_search and name not in args.only_search:
                continue
            spy = None
            if args.profile:
                out = args.results_dir / f"policy-{stamp}-search-{name}-medecin.collapsed"
                spy = subprocess.Popen(
                    [py_spy() or "py-spy", "record", "--pid", str(pid), "--rate", str(PROFILE_RATE), "--nolineno",
                     "--format", "raw", "--output", str(out), "--native"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
                time.sleep(1)
            samples: dict[str, list[tuple[float, int]]] = {c: [] for c in callers}
            totals: dict[str, Counter] = {c: Counter() for c in callers}
            entries: dict[str, Counter] = {c: Counter() for c in callers}
            errors: dict[str, Counter] = {c: Counter() for c in callers}
            machine0, load0, start = machine_busy_jiffies(), os.getloadavg()[0], time.monotonic()
            order = list(callers)
            for i in range(n):
                url = template.format(patient=picks[i]) if picks else template
                order = order[1:] + order[:1]  # rotate: no caller always runs first
                for caller in order:
                    cpu0 = main_thread_cpu_ns(pid)
                    t0 = time.perf_counter()
                    r = clients[caller].get("/" + url)
                    body = r.content  # read whole (httpx already has it)
                    ms = (time.perf_counter() - t0) * 1000
                    cpu_ns = main_thread_cpu_ns(pid) - cpu0
                    if r.status_code != 200:
                        errors[caller][r.status_code] += 1
                        continue
                    if i >= args.warmup_requests:
                        doc = json.loads(body)
                        samples[caller].append((ms, cpu_ns))
                        totals[caller][doc.get("total")] += 1
                        entries[caller][len(doc.get("entry") or ())] += 1
            machine1, seconds = machine_busy_jiffies(), time.monotonic() - start
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            busy, total_j = machine1[0] - machine0[0], machine1[1] - machine0[1]
            shape = {"name": name, "url": template, "requests_per_caller": args.requests, "seconds": seconds,
                     "loadavg_1m_before": load0,
                     "machine_cpu_percent_of_one_core": round(100 * (os.cpu_count() or 1) * busy / total_j, 1)
                     if total_j else None, "callers": {}}  # fmt: skip
            for caller in callers:
                lat = sorted(ms for ms, _ in samples[caller])
                cpu = [ns / 1e6 for _, ns in samples[caller]]
                shape["callers"][caller] = {
                    "measured": len(lat),
                    "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
                    "max_ms": lat[-1] if lat else None, "mean_ms": statistics.fmean(lat) if lat else None,
                    "server_cpu_ms_per_request": statistics.fmean(cpu) if cpu else None,
                    "totals": {str(k): v for k, v in totals[caller].items()},
                    "entries": {str(k): v for k, v in entries[caller].items()},
                    "errors": dict(errors[caller]),
                }  # fmt: skip
                if caller != "system":
                    p95 = shape["callers"][caller]["p95_ms"]
                    shape["callers"][caller]["target_met"] = p95 is not None and p95 <= SEARCH_P95_TARGET_MS
            if spy is not None:
                shape["profile"] = str(out)
            results.append(shape)
            line = ", ".join(
                f"{c} p50 {shape['callers'][c]['p50_ms']:.1f} p95 {shape['callers'][c]['p95_ms']:.1f} ms"
                for c in callers
            )
            print(f"  {name}: {line} (machine {shape['machine_cpu_percent_of_one_core']} % of one core)", flush=True)
    finally:
        for client in clients.values():
            client.close()
    return results


# --- the SQL of the médecin's search ------------------------------------------------------------------------------
def explain(path: Path, claims: dict, facts: dict, repeat: int = 5) -> dict:
    """The statements of ``DocumentReference?patient=…&_count=200`` for the médecin and for a system token:
    SQL, plan and SQLite-only time (this process, read-only connection, the server's page cache size)."""
    from fhir_server.policy.access import access_for
    from fhir_server.search.parameters import parse
    from fhir_server.security.principal import Principal
    from fhir_server.store.query import IdIn, Search
    from fhir_server.store.sqlite import _match_where

    access = access_for(Principal.from_claims(claims))
    criteria = parse("DocumentReference", [("patient", f"Patient/{facts['bench_patient']}")])
    out: dict = {}
    for label, where in (
        ("system", criteria.where),
        ("medecin", criteria.where + access.constraints("DocumentReference")),
    ):
        match = _match_where(Search("DocumentReference", where))
        statements = {
            "count": match.statement(f"SELECT count(*) FROM resource r WHERE {match.sql}", match.args),
            "page": match.statement(
                "SELECT v.type, v.id, v.version, v.last_updated, v.method, v.body FROM resource r"
                " JOIN resource_version v ON v.type = r.type AND v.id = r.id AND v.version = r.version"
                f" WHERE {match.sql} ORDER BY r.id LIMIT ?",
                [*match.args, 201],
            ),
        }
        # the read's visibility check (crud.require_visible → store.find_ids): the document's id and the conditions
        check = _match_where(
            Search("DocumentReference", (IdIn((facts["read_document"],)), *where[len(criteria.where) :]))
        )
        statements["read_check"] = check.statement(
            f"SELECT r.id FROM resource r WHERE {check.sql} ORDER BY r.id LIMIT ?", [*check.args, 1]
        )
        out[label] = {}
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            conn.execute("PRAGMA cache_size=-65536")
            for kind, (sql, sql_args) in statements.items():
                plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", sql_args)]
                times, rows = [], 0
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    rows = len(conn.execute(sql, sql_args).fetchall())
                    times.append((time.perf_counter() - t0) * 1000)
                out[label][kind] = {"sql": sql, "args": [str(a) for a in sql_args], "plan": plan,
                                    "sqlite_ms_median": statistics.median(times), "sqlite_ms_min": min(times),
                                    "rows": rows}  # fmt: skip
    return out


def print_explain(doc: dict, show_sql: bool) -> None:
    for label, statements in doc.items():
        for kind, part in statements.items():
            print(f"\n--- {label}, {kind}: SQLite alone {part['sqlite_ms_median']:.2f} ms (median; min "
                  f"{part['sqlite_ms_min']:.2f}), {part['rows']} row(s)")  # fmt: skip
            if label != "system" and show_sql:
                print(f"  SQL: {part['sql']}")
                print(f"  args: {part['args']}")
            for line in part["plan"]:
                print(f"    {line}")


# --- report --------------------------------------------------------------------------------------------------------
def print_report(doc: dict) -> None:
    m = doc["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["loadavg_before"])
    print(f"\nmachine: nproc={m['nproc']} ({m['cpu_model']}), Python {m['python']}, load before {load}; "
          "wrk, the server and other jobs share the cores")  # fmt: skip
    c = doc["corpus"]
    print(f"corpus: {c.get('patients', '?'):,} patients, "
          + ", ".join(f"{t} {n:,}" for t, n in c.get("resources", {}).items())
          + f"; {c.get('size_bytes', 0) / 2**20:,.0f} MiB")  # fmt: skip
    for caller, scope in doc.get("granted_scopes", {}).items():
        print(f"  {caller}: granted {scope[:150]}{'…' if len(scope) > 150 else ''}")
    reads = doc.get("reads")
    if reads:
        print(f"\nREADS ({doc['wrk']}; median of {doc['settings']['rounds']} alternated rounds)")
        print(
            f"{'':50}{'system req/s':>13}{'PS req/s':>10}{'sys µs':>8}{'PS µs':>8}{'overhead':>10}{'(CPU)':>8}"
            f"{'confined req/s, µs':>22}"
        )
        for variant in ("one_document", "spread"):
            s = reads.get(variant, {}).get("summary")
            if not s:
                continue
            ok = "OK" if s["target_met"] else "MISSED"
            label = "GET /DocumentReference/{id}, " + s["label"]
            print(f"{label:<50}{s['system_rps']:>13,.0f}{s['medecin_rps']:>10,.0f}"
                  f"{s['system_cpu_us']:>8,.0f}{s['medecin_cpu_us']:>8,.0f}{s['overhead_rps']:>9.0%} "
                  f"{s['overhead_cpu']:>7.0%}{s['system_confined_rps']:>14,.0f}{s['system_confined_cpu_us']:>8,.0f}"
                  f"  target ≤ 30 % {ok}")  # fmt: skip
    if doc.get("searches"):
        print("\nSEARCHES (sequential, callers interleaved; ms; CPU = server main thread per request)")
        print(f"{'shape':<24}{'caller':<12}{'n':>5}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'CPU ms':>8}{'total':>8}")
        for shape in doc["searches"]:
            for caller, r in shape["callers"].items():
                seen = sorted(int(t) for t in r["totals"] if t not in ("None", "null"))
                total = "-" if not seen else str(seen[0]) if seen[0] == seen[-1] else f"{seen[0]}-{seen[-1]}"
                mark = ""
                if "target_met" in r and shape["name"].startswith("bench200"):
                    mark = "  ≤20 OK" if r["target_met"] else "  ≤20 MISSED"
                print(f"{shape['name']:<24}{caller:<12}{r['measured']:>5}{r['p50_ms']:>8.1f}{r['p95_ms']:>8.1f}"
                      f"{r['p99_ms']:>8.1f}{r['max_ms']:>8.1f}{r['server_cpu_ms_per_request']:>8.2f}"
                      f"{total:>8}{mark}")  # fmt: skip
            print(f"{'':<24}(machine {shape['machine_cpu_percent_of_one_core']} % of one core during the shape)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="sqlite:////tmp/policy_corpus/policy.db", help="sqlite:/// URL of the corpus")
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--timeout", default="30s", help="wrk --timeout (default 30s: a slow read is measured, not dropped)")
    p.add_argument("--warmup", type=int, default=2, help="wrk warm-up seconds per token and variant (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="alternated system/PS wrk rounds (default 2)")
    p.add_argument("--spread", type=int, default=1000, help="documents of distinct patients in the spread read run")
    p.add_argument("--requests", type=int, default=200, help="measured search requests per caller and shape (200)")
    p.add_argument("--warmup-requests", type=int, default=20, help="un-measured search requests first (20)")
    p.add_argument("--request-timeout", type=float, default=60)
    p.add_argument("--only-search", action="append", metavar="SHAPE", help="run this search shape only (repeatable)")
    p.add_argument("--skip-reads", action="store_true")
    p.add_argument("--skip-searches", action="store_true")
    p.add_argument("--explain", action="store_true", help="SQL, plans and SQLite-only timings of the PS search")
    p.add_argument("--explain-sql", action="store_true", help="with --explain: print the SQL and its arguments too")
    p.add_argument("--profile", action="store_true", help="py-spy the server during the PS runs (slows it)")
    p.add_argument("--server-src", type=Path, help="run the server from this copy of the package (an experiment)")
    p.add_argument("--lifetime", type=int, default=3600, help="token lifetime, seconds (default 3600)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--audit",
        choices=("true", "false"),
        default="true",
        help="the audit trail (FHIR_SERVER_AUDIT; default true, the product's default: every read traced)",
    )
    p.add_argument("--label", default="", help="free text stored with the results")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.server_src is not None:
        sys.path.insert(0, str(args.server_src.resolve()))  # --explain compiles with the code the server runs
    from fhir_server.store import sqlite_path

    path = Path(sqlite_path(args.store)).resolve()
    facts_file = path.with_name(path.name + ".policy.json")
    if not path.exists() or not facts_file.exists():
        p.error(f"{path} (and {facts_file.name}) missing: build it with bench/policy_corpus.py")
    if not args.skip_reads and shutil.which("wrk") is None:
        p.error("wrk is not installed (Debian/Ubuntu: apt-get install -y wrk), or use --skip-reads")
    if args.profile and py_spy() is None:
        p.error("--profile needs py-spy (.venv/bin/pip install py-spy)")
    facts = json.loads(facts_file.read_text())
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    settings = WrkSettings(args.threads, args.connections, args.duration, args.timeout)
    store = f"sqlite:///{path}"
    doc: dict = {
        "benchmark": "policy",
        "timestamp": stamp,
        "label": args.label,
        "machine": machine_facts(),
        "corpus": {k: v for k, v in facts.items() if k != "read_targets"},
        "server": {
            "workers": 1,
            "auth": "on",
            "audit": args.audit,
            "store": store,
            "src": str(args.server_src or "editable install"),
        },
        "wrk": settings.describe(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {"read_overhead": READ_OVERHEAD_TARGET, "search_p95_ms": SEARCH_P95_TARGET_MS},
    }
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="fhir-policy-bench-") as tmp_name:
            tmp = Path(tmp_name)
            server, base = start_server(procs, store, args.results_dir / f"policy-{stamp}-server.log",
                                        args.server_src, timeout=600,
                                        env_extra={"FHIR_SERVER_AUDIT": args.audit})  # fmt: skip
            tokens, granted = {}, {}
            tokens["system"], granted["system"] = mint(store, base, "system/*.rs", args.lifetime)
            tokens["system_confined"], granted["system_confined"] = mint(store, base, CONFINED_SCOPE, args.lifetime)
            for caller in ("medecin", "pharmacien"):
                ps = facts["professionals"][caller]["idNatPs"]
                tokens[caller], granted[caller] = mint(store, base, PS_SCOPE, args.lifetime, ps)
            doc["granted_scopes"] = granted
            doc["token_bytes"] = {c: len(t) for c, t in tokens.items()}
            headers = {c: {"Authorization": f"Bearer {tokens[c]}", "Accept": FHIR_JSON} for c in CALLERS}
            print("what each caller sees:", flush=True)
            doc["visibility"] = check_visibility(base, headers, facts)
            if args.explain:
                doc["explain"] = explain(path, claims_of(tokens["medecin"]), facts)
                print_explain(doc["explain"], args.explain_sql)
            if not args.skip_reads:
                doc["first_reads"] = first_reads(args, base, server, tokens, facts)
                doc["reads"] = read_runs(args, settings, base, server, tokens, facts, tmp, stamp)
            if not args.skip_searches:
                doc["searches"] = search_runs(args, base, server, tokens, facts, stamp)
            doc["server_log_tail"] = server.log_tail(2000)
    finally:
        procs.stop_all()
    if args.profile:
        doc["profiles"] = {}
        for f in sorted(args.results_dir.glob(f"policy-{stamp}-*.collapsed")):
            if f.stat().st_size:
                doc["profiles"][f.name] = summarize_profile(f)
    out = args.results_dir / f"policy-{stamp}.json"
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print_report(doc)
    for name, summary in doc.get("profiles", {}).items():
        print(f"\npy-spy {name}: {summary['samples']} samples; self by package: "
              + ", ".join(f"{k} {v:.0f}%" for k, v in summary["self_by_package"][:8]))  # fmt: skip
        for fn, pct in summary["inclusive"][:18]:
            print(f"    {pct:5.1f}%  {fn}")
    print(f"\nresults: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    bad = [c for c, v in doc["visibility"].items() if not v["ok"]]
    if bad:
        print(f"WARNING: what {', '.join(bad)} sees differs from the corpus builder's expectation", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

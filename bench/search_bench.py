#!/usr/bin/env python3
"""Search latency of the real server on a large SQLite corpus (``bench/search_corpus.py``), one worker.

1. Starts ``fhir-server serve --store sqlite:///… --workers 1`` as a subprocess (its own process group),
   waits for ``GET /metadata``.
2. For each query shape: ``--warmup`` requests, then ``--requests`` sequential requests over one
   keep-alive HTTP connection (httpx); latency = request sent → whole body received. Shapes with a
   varying part (a random existing patient per request) draw it from the corpus with ``--seed``.
   A shape stops early once it has used ``--max-seconds`` (heavy shapes: a few samples say enough).
3. Reports p50/p95/p99/max in ms, the result counts (Bundle ``total``), the server's CPU time per
   request (from /proc: less sensitive to other load on the machine than wall time) and the machine's
   CPU use during the shape (other processes compete for the 2 cores; the load is recorded).
4. Prints a table and writes ``bench/results/search-<UTC timestamp>.json``.

``--explain`` also prints, per shape, the SQL the SQLite store runs (``parse`` → ``_match_where`` /
``compile_search``, as the server does), its ``EXPLAIN QUERY PLAN``, and the time SQLite alone takes
for the count and the first page (in this process, read-only connection), to split database time from
the rest. ``--profile SHAPE`` records the server with py-spy during that shape.

A ``mongodb://…/database?replicaSet=…`` store (a corpus built by ``search_corpus.py`` into that
database) is measured the same way over HTTP; the corpus facts and the patients drawn come from the
database with pymongo (the same ids in the same order as SQLite's, so the same patients are drawn).
``--explain`` is SQLite-only (refused for MongoDB).

Targets (search issue): ``Patient?family=dup`` p95 ≤ 20 ms; ``Observation?subject=…&code=…`` p95 ≤ 30 ms.

Usage (from the repository root)::

    .venv/bin/python bench/search_corpus.py --store sqlite:////tmp/search_corpus/search.db   # once
    .venv/bin/python bench/search_bench.py --store sqlite:////tmp/search_corpus/search.db
    .venv/bin/python bench/search_bench.py --store … --only obs_subject_code --explain --profile obs_subject_code
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import parse_qsl

import httpx

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
FHIR_JSON = "application/fhir+json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SYSTOLIC = "http://loinc.org|8480-6"


@dataclass(frozen=True)
class Shape:
    name: str
    template: str  # relative URL; {patient} = a random existing Patient id, new per request
    target_p95_ms: float | None = None


SHAPES = (
    Shape("patient_family_dup", "Patient?family=dup", 20.0),
    Shape("patient_family_given", "Patient?family=dupont&given=h"),
    Shape("obs_subject_code", f"Observation?subject=Patient/{{patient}}&code={SYSTOLIC}", 30.0),
    # analysts' broad searches (issue 15): the default answers the page at once (docs/search.md "Totals")
    Shape("obs_code_date", f"Observation?code={SYSTOLIC}&date=ge2023-01-01&_count=50", 50.0),
    Shape("obs_code_date_none", f"Observation?code={SYSTOLIC}&date=ge2023-01-01&_count=50&_total=none", 20.0),
    Shape("obs_code_date_estimate", f"Observation?code={SYSTOLIC}&date=ge2023-01-01&_count=50&_total=estimate"),
    Shape("obs_code_date_accurate", f"Observation?code={SYSTOLIC}&date=ge2023-01-01&_count=50&_total=accurate"),
    Shape("obs_chain_family", "Observation?subject:Patient.family=dupont"),
    Shape("patient_has_value", "Patient?_has:Observation:subject:value-quantity=gt180", 100.0),
    Shape("patient_has_value_accurate", "Patient?_has:Observation:subject:value-quantity=gt180&_total=accurate"),
    Shape("obs_count_code", f"Observation?_summary=count&code={SYSTOLIC}", 32.0),  # 160k: ≥ 5 M counted/s
    Shape("patient_birthdate", "Patient?birthdate=1980"),
)


# --- processes ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


class Server:
    def __init__(self, store: str, src: Path | None, log: Path, timeout: float) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
        if src is not None:  # run a snapshot of the package instead of the editable working tree
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
        cmd = [
            sys.executable, "-m", "fhir_server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--store", store, "--workers", "1", "--log-level", "warning", "--auth", "off",
        ]  # fmt: skip
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=src or REPO, start_new_session=True
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.popen.poll() is not None:
                raise RuntimeError(f"server exited with {self.popen.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    print(f"server ready in {time.monotonic() - start:.1f}s (pid {self.popen.pid})", flush=True)
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer /metadata within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def cpu(self) -> float:
        return cpu_seconds(self.popen.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # its own process group: the server only
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)


def _terminate(signum, frame):  # SIGTERM/SIGHUP → unwind through the finally that stops the server
    raise SystemExit(128 + signum)


# --- corpus facts ------------------------------------------------------------------------------------


def open_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def corpus_facts(path: Path) -> dict:
    with open_ro(path) as conn:
        counts = dict(conn.execute("SELECT type, count(*) FROM resource WHERE deleted = 0 GROUP BY type"))
        entries = conn.execute("SELECT max(rowid) FROM search_index").fetchone()[0]
        indexes = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")]
        analyzed = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone()[0] > 0
    wal = Path(f"{path}-wal")
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "resources": counts,
        "search_index_rows_approx": entries,
        "indexes": indexes,
        "analyzed": analyzed,
    }


def patient_ids(path: Path, n: int, seed: int) -> list[str]:
    with open_ro(path) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM resource WHERE type = 'Patient' AND deleted = 0")]
    if not ids:
        raise RuntimeError(f"{path} holds no Patient: build it with bench/search_corpus.py")
    rng = random.Random(seed)
    return [rng.choice(ids) for _ in range(n)]


def is_mongo(url: str) -> bool:
    return url.startswith(("mongodb://", "mongodb+srv://"))


def mongo_corpus_facts(url: str) -> dict:
    from pymongo import MongoClient

    from fhir_server.store.mongo import CURRENT, database_name

    name = database_name(url)
    with MongoClient(url, serverSelectionTimeoutMS=10_000) as client:
        db = client[name]
        by_type = db[CURRENT].aggregate([{"$match": {"del": False}}, {"$group": {"_id": "$t", "n": {"$sum": 1}}}])
        counts = {d["_id"]: d["n"] for d in sorted(by_type, key=lambda d: d["_id"])}
        stats = db.command("dbStats")
        collections = {c: db[c].estimated_document_count() for c in sorted(db.list_collection_names())}
        indexes = sorted(f"{c}.{i['name']}" for c in collections for i in db[c].list_indexes())
        server = client.server_info().get("version")
    return {
        "database": name,
        "server_version": server,
        "data_size_bytes": stats.get("dataSize"),
        "storage_size_bytes": stats.get("storageSize"),
        "index_size_bytes": stats.get("indexSize"),
        "resources": counts,
        "collections": collections,
        "indexes": indexes,
    }


def mongo_patient_ids(url: str, n: int, seed: int) -> list[str]:
    """As ``patient_ids``, from the store's ``resource`` collection in id order (SQLite's primary key order)."""
    from pymongo import MongoClient

    from fhir_server.store.mongo import CURRENT, database_name

    with MongoClient(url, serverSelectionTimeoutMS=10_000) as client:
        cursor = client[database_name(url)][CURRENT].find({"t": "Patient", "del": False}, {"_id": 0, "i": 1})
        ids = sorted(d["i"] for d in cursor)
    if not ids:
        raise RuntimeError(f"{url} holds no Patient: build it with bench/search_corpus.py")
    rng = random.Random(seed)
    return [rng.choice(ids) for _ in range(n)]


# --- measuring ---------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def run_shape(client: httpx.Client, server: Server, shape: Shape, ids: list[str], args: argparse.Namespace) -> dict:
    urls = [shape.template.format(patient=pid) for pid in ids]
    latencies: list[float] = []
    totals: list[int | None] = []
    methods: Counter[str] = Counter()  # Bundle._total's search-total-method extension (estimate / omitted)
    entries: list[int] = []
    statuses: Counter[int] = Counter()
    first_error = None

    def one(url: str) -> tuple[float, httpx.Response]:
        start = time.perf_counter()
        response = client.get(url, timeout=args.request_timeout)  # the whole body is read before get() returns
        return (time.perf_counter() - start) * 1000, response

    timed_out = None
    shape_start = time.monotonic()
    cpu0, machine0, load0 = server.cpu(), machine_jiffies(), os.getloadavg()[0]
    measured_start = time.monotonic()
    try:
        for url in urls[: args.warmup]:
            one(url)
            if time.monotonic() - shape_start > args.max_seconds / 4:
                break
        cpu0, machine0, load0 = server.cpu(), machine_jiffies(), os.getloadavg()[0]
        measured_start = time.monotonic()
        for url in urls[args.warmup : args.warmup + args.requests]:
            ms, response = one(url)
            statuses[response.status_code] += 1
            if response.status_code != 200:
                first_error = first_error or {"url": url, "status": response.status_code, "body": response.text[:1000]}
                continue
            latencies.append(ms)
            doc = response.json()
            totals.append(doc.get("total"))
            ext = [e.get("valueCode") for e in (doc.get("_total") or {}).get("extension", ()) if "valueCode" in e]
            methods[ext[0] if ext else ("exact" if doc.get("total") is not None else "none")] += 1
            entries.append(len(doc.get("entry") or ()))
            if time.monotonic() - measured_start > args.max_seconds and len(latencies) >= 5:
                break
    except httpx.TimeoutException:
        # One worker whose event loop is stuck in SQLite: the caller restarts the server.
        timed_out = url
    wall = time.monotonic() - measured_start
    cpu1, machine1 = server.cpu(), machine_jiffies()
    n = sum(statuses.values())
    lat = sorted(latencies)
    known_totals = [t for t in totals if t is not None]
    busy, total_j = machine1[0] - machine0[0], machine1[1] - machine0[1]
    result = {
        "name": shape.name,
        "url": shape.template,
        "requests": n,
        "statuses": dict(statuses),
        "target_p95_ms": shape.target_p95_ms,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "mean_ms": statistics.fmean(lat) if lat else None,
        "total": {
            "min": min(known_totals) if known_totals else None,
            "median": statistics.median(known_totals) if known_totals else None,
            "max": max(known_totals) if known_totals else None,
        },
        "total_method": dict(methods),
        "entries_per_page": {"min": min(entries), "max": max(entries)} if entries else None,
        "server_cpu_ms_per_request": 1000 * (cpu1 - cpu0) / n if n else None,
        "machine_cpu_percent_of_one_core": round(100 * (os.cpu_count() or 1) * busy / total_j, 1) if total_j else None,
        "loadavg_1m_before": load0,
        "seconds": wall,
        "stopped_early": n < args.requests,
        "measured": len(lat),
    }
    if shape.target_p95_ms is not None and lat and not timed_out:
        result["target_met"] = result["p95_ms"] <= shape.target_p95_ms
    if first_error:
        result["first_error"] = first_error
    if timed_out:
        result["timed_out"] = {"url": timed_out, "after_s": args.request_timeout}
        if shape.target_p95_ms is not None:
            result["target_met"] = False
    return result


# --- SQL, plans and database-only timings --------------------------------------------------------------


def explain(path: Path, shape: Shape, patient: str, repeat: int = 3, budget: float = 10.0) -> dict:
    """The statements the SQLite store runs for this search (count + first page), plans and SQLite time.

    A statement still running after ``budget`` seconds is interrupted (reported as such, not timed).
    """
    from fhir_server.search.parameters import parse
    from fhir_server.store.sqlite import _match_where

    url = shape.template.format(patient=patient)
    type_, _, query = url.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("_count", "_summary")]
    count_only = "_summary=count" in query
    page_size = int(dict(parse_qsl(query)).get("_count", 50))
    match = _match_where(parse(type_, pairs))
    where, args = match.sql, match.args
    statements = {"count": match.statement(f"SELECT count(*) FROM resource r WHERE {where}", args)}
    if not count_only:
        statements["page"] = match.statement(
            "SELECT v.type, v.id, v.version, v.last_updated, v.method, v.body FROM resource r"
            " JOIN resource_version v ON v.type = r.type AND v.id = r.id AND v.version = r.version"
            f" WHERE {where} ORDER BY r.id LIMIT ?",
            [*args, page_size + 1],
        )
    out: dict = {"url": url}
    with open_ro(path) as conn:
        conn.execute("PRAGMA cache_size=-65536")  # the server's setting
        for label, (sql, sql_args) in statements.items():
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", sql_args)]
            times, rows, interrupted = [], 0, False
            for _ in range(repeat):
                if sum(times) > 2000:  # slow statements: one timing is enough
                    break
                start = time.perf_counter()
                deadline = start + budget
                conn.set_progress_handler(lambda d=deadline: time.perf_counter() > d, 10_000)
                try:
                    rows = len(conn.execute(sql, sql_args).fetchall())
                except sqlite3.OperationalError as exc:
                    if "interrupt" not in str(exc):
                        raise
                    interrupted = True
                    break
                finally:
                    conn.set_progress_handler(None, 0)
                times.append((time.perf_counter() - start) * 1000)
            out[label] = {
                "sql": sql,
                "args": [a if not isinstance(a, float) else repr(a) for a in sql_args],
                "plan": plan,
                "sqlite_ms_median": None if interrupted else statistics.median(times),
                "interrupted_after_s": budget if interrupted else None,
                "rows": None if interrupted else rows,
            }
    return out


def print_explain(doc: dict) -> None:
    print(f"\n--- {doc['url']}")
    for label in ("count", "page"):
        if label not in doc:
            continue
        part = doc[label]
        if part["interrupted_after_s"]:
            print(f"  [{label}] SQLite alone: still running after {part['interrupted_after_s']:.0f} s: interrupted")
        else:
            print(f"  [{label}] SQLite alone: {part['sqlite_ms_median']:.2f} ms (median), {part['rows']} row(s)")
        print(f"  SQL: {part['sql']}")
        print(f"  args: {part['args']}")
        for line in part["plan"]:
            print(f"    {line}")


# --- report ------------------------------------------------------------------------------------------


def machine_facts() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("uvicorn", "starlette", "httpx", "orjson"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "loadavg_before": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": versions,
        "git_commit": commit.stdout.strip() or None,
        "git_dirty": bool(dirty.stdout.strip()),
    }


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(results: list[dict]) -> None:
    header = (
        f"{'shape':<22} {'n':>4} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'cpu/req':>8} "
        f"{'total':>15} {'target':>12}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        t = r["total"]
        if t["min"] is None:
            total = "-"
        elif t["min"] == t["max"]:
            total = f"{t['min']:,}"
        else:
            total = f"{t['min']:,}..{t['max']:,}"
        target = "-"
        if r["target_p95_ms"] is not None:
            target = f"≤{r['target_p95_ms']:.0f} {'OK' if r.get('target_met') else 'MISSED'}"
        methods = [m for m in r.get("total_method", {}) if m != "exact"]
        if methods:
            total = f"{total} {'/'.join(methods)}".strip()
        print(
            f"{r['name']:<22} {r['requests']:>4} {fmt(r['p50_ms']):>8} {fmt(r['p95_ms']):>8} "
            f"{fmt(r['p99_ms']):>8} {fmt(r['max_ms']):>8} {fmt(r['server_cpu_ms_per_request']):>8} "
            f"{total:>15} {target:>12}"
        )
        if r.get("timed_out"):
            print(f"    a request took more than {r['timed_out']['after_s']:.0f} s (server restarted): "
                  f"{r['measured']} measured before")  # fmt: skip
        if r.get("first_error"):
            err = r["first_error"]
            print(f"    {sum(v for k, v in r['statuses'].items() if k != 200)} error(s), first: {err['status']} "
                  f"{err['body'][:300]}")  # fmt: skip
    print(
        "(ms; cpu/req = server CPU ms per request; total = Bundle.total over the measured requests, followed by its"
        " search-total-method extension when not exact)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--store",
        default="sqlite:////tmp/search_corpus/search.db",
        help="sqlite:/// URL of the corpus, or mongodb://host:port/database?replicaSet=… (no --explain)",
    )
    p.add_argument("--requests", type=int, default=200, help="measured requests per shape (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="un-measured requests per shape first (default 20)")
    p.add_argument("--max-seconds", type=float, default=60, help="stop a shape after this many seconds (≥5 samples)")
    p.add_argument(
        "--request-timeout", type=float, default=60, help="give up a shape when one request takes longer (s)"
    )
    p.add_argument("--explain-timeout", type=float, default=10, help="interrupt an --explain statement after (s)")
    p.add_argument("--only", action="append", metavar="SHAPE", help="run this shape only (repeatable)")
    p.add_argument("--seed", type=int, default=7, help="seed for the patients drawn")
    p.add_argument("--explain", action="store_true", help="print each shape's SQL, query plan and SQLite-only time")
    p.add_argument("--profile", metavar="SHAPE", help="record the server with py-spy during this shape")
    p.add_argument(
        "--server-src",
        type=Path,
        help="run the server (and --explain) from this copy of the package (a directory holding fhir_server/ "
        "and capability/, e.g. a git archive of another commit) instead of the editable install",
    )
    p.add_argument("--label", default="", help="free text stored in the results (e.g. 'with index X')")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--no-save", action="store_true", help="do not write a results file")
    args = p.parse_args(argv)

    if args.server_src is not None:  # --explain compiles with the same code the server runs
        sys.path.insert(0, str(args.server_src.resolve()))
    from fhir_server.store import sqlite_path

    mongo = is_mongo(args.store)
    if mongo:
        if args.explain:
            p.error("--explain shows SQLite statements and plans: not available for a mongodb:// store")
        path = None
        store_url = args.store
    else:
        path = Path(sqlite_path(args.store)).resolve()
        if not path.exists():
            p.error(f"{path} does not exist: build it with bench/search_corpus.py")
        store_url = f"sqlite:///{path}"
    shapes = [s for s in SHAPES if not args.only or s.name in args.only]
    if args.only and len(shapes) != len(set(args.only)):
        p.error(f"unknown shape in {args.only}; known: {', '.join(s.name for s in SHAPES)}")

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if path is None:
        facts = mongo_corpus_facts(store_url)
        print(
            f"corpus MongoDB database {facts['database']!r} (server {facts['server_version']}): "
            + ", ".join(f"{t} {c:,}" for t, c in facts["resources"].items())
            + f"; data {(facts['data_size_bytes'] or 0) / 2**20:.1f} MiB, indexes "
            + f"{(facts['index_size_bytes'] or 0) / 2**20:.1f} MiB",
            flush=True,
        )
        ids = mongo_patient_ids(store_url, args.warmup + args.requests, args.seed)
    else:
        facts = corpus_facts(path)
        print(
            f"corpus {path}: {facts['size_bytes'] / 2**30:.2f} GiB, "
            + ", ".join(f"{t} {c:,}" for t, c in facts["resources"].items())
            + f"; analyzed: {facts['analyzed']}",
            flush=True,
        )
        ids = patient_ids(path, args.warmup + args.requests, args.seed)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    log = args.results_dir / f"search-{stamp}-server.log"
    doc: dict = {
        "kind": "search",
        "started": stamp,
        "label": args.label,
        "machine": machine_facts(),
        "corpus": facts,
        "server": {"workers": 1, "store": store_url, "src": str(args.server_src or "editable install")},
        "settings": {"requests": args.requests, "warmup": args.warmup, "max_seconds": args.max_seconds,
                     "seed": args.seed},
        "shapes": [],
    }  # fmt: skip
    if args.explain and path is not None:
        doc["explain"] = []
        for shape in shapes:
            found = explain(path, shape, ids[0], budget=args.explain_timeout)
            print_explain(found)
            doc["explain"].append(found)
    # Generous: a server whose schema changed migrates the corpus (CREATE INDEX on ~20M rows) at start.
    server = Server(store_url, args.server_src, log, timeout=900)
    spy = None
    try:
        with httpx.Client(base_url=server.base, headers={"Accept": FHIR_JSON}, timeout=300) as client:
            for shape in shapes:
                if args.profile == shape.name:
                    out = args.results_dir / f"search-{stamp}-{shape.name}.pyspy.txt"
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.popen.pid),
                         "--rate", "250", "--format", "raw", "--output", str(out), "--native"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    )  # fmt: skip
                    time.sleep(1)
                print(f"{shape.name}: {shape.template} …", end=" ", flush=True)
                result = run_shape(client, server, shape, ids, args)
                if result.get("timed_out"):
                    print(f"a request took more than {args.request_timeout:.0f} s: restarting the server", flush=True)
                    server.stop()
                    server = Server(store_url, args.server_src, log, timeout=900)
                    client.base_url = server.base
                else:
                    print(f"p50 {fmt(result['p50_ms'])} ms, p95 {fmt(result['p95_ms'])} ms", flush=True)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                    spy.wait(timeout=60)
                    result["profile"] = str(out)
                    spy = None
                doc["shapes"].append(result)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        server.stop()
    print_table(doc["shapes"])
    if not args.no_save:
        out_path = args.results_dir / f"search-{stamp}.json"
        out_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"results: {out_path.relative_to(REPO) if out_path.is_relative_to(REPO) else out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

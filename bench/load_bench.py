#!/usr/bin/env python3
"""Bulk-load throughput: ``fhir-server load`` vs ``POST /`` transactions over HTTP, same data, fresh SQLite.

1. **CLI**: ``fhir-server load --store sqlite:///<tmp>/cli.db [--workers N] <data>`` as a subprocess (its own
   process group). Wall time, the loader's own summary (resources, resources/s, CPU of its main process and
   of its workers), and the CPU of the whole process tree sampled from ``/proc`` (main, forkserver,
   workers). The stored resources are counted in the database afterwards.
2. **HTTP**: ``fhir-server serve`` (1 uvicorn worker) on another fresh database; ``--clients`` threads POST
   the same transaction Bundles (bytes as in the archive, ``Prefer: return=minimal``) to ``[base]``. Wall time
   from the first request to the last answer, server CPU, client CPU.

The machine's cores are shared with whatever else runs: the report gives, for each run, the CPU seconds it
used, the share of the machine other processes used meanwhile, and a **CPU-bound rate**: resources /
max(busiest process's CPU, all its CPU / cores) — what the run would do with the cores to itself (an
estimate: it ignores I/O waits and imperfect overlap).

Usage (from the repository root, project venv)::

    .venv/bin/python bench/load_bench.py                          # ../shared/data/synthea-r4-dev.tgz
    .venv/bin/python bench/load_bench.py --limit 40               # the first 40 Bundles only
    .venv/bin/python bench/load_bench.py --workers 3 --clients 8
    .venv/bin/python bench/load_bench.py --skip-http               # CLI only

Writes ``bench/results/load-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import queue
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from rest_throughput import stop_process_group

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "synthea-r4-dev.tgz"
TARGET = 2000.0  # resources/s
CLK_TCK = os.sysconf("SC_CLK_TCK")
SUMMARY = re.compile(
    r"loaded (?P<files>\d+) files, (?P<resources>\d+) resources, (?P<errors>\d+) errors in (?P<elapsed>[\d.]+) s"
    r" \((?P<rate>\d+) resources/s; CPU (?P<main>[\d.]+) s main \+ (?P<workers>[\d.]+) s workers\)"
)


# --- processes and CPU ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(process group, CPU seconds) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


class TreeCPU:
    """CPU of every process of a process group, sampled from /proc (the last value seen for each pid)."""

    def __init__(self, pgid: int, interval: float = 0.2) -> None:
        self.pgid = pgid
        self.interval = interval
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                found = _stat(int(entry))
                if found is not None and found[0] == self.pgid:
                    self.seen[int(entry)] = found[1]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeCPU:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def total(self) -> float:
        return sum(self.seen.values())

    def busiest(self) -> float:
        return max(self.seen.values(), default=0.0)


@dataclass
class Started:
    procs: list[subprocess.Popen] = field(default_factory=list)

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop_process_group(proc)  # its own group: what we started, nothing else
        self.procs.clear()


def _terminate(signum, frame):  # SIGTERM/SIGHUP → unwind through the finally that stops what we started
    raise SystemExit(128 + signum)


def fhir_server() -> list[str]:
    exe = Path(sys.executable).parent / "fhir-server"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fhir_server.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- data ----------------------------------------------------------------------------------------


def bundles(path: Path, limit: int | None) -> list[tuple[str, bytes]]:
    """The JSON members of the archive (streamed; kept: the HTTP clients send them as they are)."""
    out = []
    with tarfile.open(path, "r|*") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".json"):
                stream = archive.extractfile(member)
                assert stream is not None
                out.append((member.name, stream.read()))
                if limit and len(out) >= limit:
                    break
    return out


def write_subset(data: list[tuple[str, bytes]], path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, body in data:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return path


def entry_count(body: bytes) -> int:
    return len(json.loads(body).get("entry") or [])


def stored(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM resource WHERE type != 'SearchParameter'").fetchone()[0]
    finally:
        conn.close()


def cpu_bound_rate(resources: int, busiest: float, total: float, cores: int) -> float | None:
    bound = max(busiest, total / cores)
    return resources / bound if bound > 0 else None


# --- runs ------------------------------------------------------------------------------------------


def run_cli(started: Started, data: Path, tmp: Path, workers: int | None, cores: int) -> dict:
    db = tmp / "cli.db"
    cmd = [*fhir_server(), "load", "--store", f"sqlite:///{db}"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    cmd.append(str(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    busy0, total0 = machine_jiffies()
    begin = time.monotonic()
    proc = started.popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeCPU(proc.pid) as cpu:
        out, err = proc.communicate()
    wall = time.monotonic() - begin
    busy1, total1 = machine_jiffies()
    if proc.returncode != 0:
        raise RuntimeError(f"fhir-server load exited with {proc.returncode}:\n{err[-3000:]}")
    match = SUMMARY.search(out)
    if match is None:
        raise RuntimeError(f"no summary line in: {out!r}")
    summary = {k: float(v) for k, v in match.groupdict().items()}
    resources = int(summary["resources"])
    machine_cpu = (busy1 - busy0) / CLK_TCK
    return {
        "command": " ".join(cmd),
        "wall_s": round(wall, 2),
        "resources": resources,
        "stored": stored(db),
        "files": int(summary["files"]),
        "errors": int(summary["errors"]),
        "rate_wall": round(resources / wall, 1),
        "rate_loader": summary["rate"],  # the loader's own elapsed (without interpreter start-up)
        "cpu_main_s": summary["main"],
        "cpu_workers_s": summary["workers"],
        "cpu_tree_s": round(cpu.total(), 2),
        "cpu_busiest_s": round(cpu.busiest(), 2),
        "processes": len(cpu.seen),
        "others_cpu_share": round(max(machine_cpu - cpu.total(), 0) / ((total1 - total0) / CLK_TCK), 3),
        "rate_cpu_bound": round(cpu_bound_rate(resources, cpu.busiest(), cpu.total(), cores) or 0, 1),
        "db_bytes": db.stat().st_size,
    }


def run_http(started: Started, data: list[tuple[str, bytes]], tmp: Path, clients: int, cores: int) -> dict:
    db = tmp / "http.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    env.update(FHIR_SERVER_STORE=f"sqlite:///{db}", FHIR_SERVER_LOAD_DEFINITIONS="false")
    log = (tmp / "serve.log").open("wb")
    server = started.popen(
        [*fhir_server(), "serve", "--port", str(port), "--auth", "off"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                break
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fhir-server serve did not start: {(tmp / 'serve.log').read_text()[-3000:]}")
        time.sleep(0.2)
    todo: queue.Queue = queue.Queue()
    for item in data:
        todo.put(item)
    lock = threading.Lock()
    counts = {"resources": 0, "requests": 0, "failed": 0}
    failures: list[str] = []
    headers = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}

    def client() -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            while True:
                try:
                    name, body = todo.get_nowait()
                except queue.Empty:
                    return
                r = http.post("/", content=body, headers=headers)
                with lock:
                    counts["requests"] += 1
                    if r.status_code == 200:
                        counts["resources"] += len(r.json().get("entry") or [])
                    else:
                        counts["failed"] += 1
                        failures.append(f"{name}: {r.status_code} {r.text[:300]}")

    server_cpu0 = _stat(server.pid)[1]  # type: ignore[index]
    client_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0, total0 = machine_jiffies()
    begin = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - begin
    busy1, total1 = machine_jiffies()
    server_cpu = _stat(server.pid)[1] - server_cpu0  # type: ignore[index]
    client_usage = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (client_usage.ru_utime - client_cpu0.ru_utime) + (client_usage.ru_stime - client_cpu0.ru_stime)
    machine_cpu = (busy1 - busy0) / CLK_TCK
    result = {
        "clients": clients,
        "wall_s": round(wall, 2),
        "requests": counts["requests"],
        "failed": counts["failed"],
        "failures": failures[:5],
        "resources": counts["resources"],
        "rate_wall": round(counts["resources"] / wall, 1),
        "cpu_server_s": round(server_cpu, 2),
        "cpu_client_s": round(client_cpu, 2),
        "others_cpu_share": round(max(machine_cpu - server_cpu - client_cpu, 0) / ((total1 - total0) / CLK_TCK), 3),
        # the server is one process: its CPU is the bound (the client's JSON-in-bytes sending is not ours)
        "rate_cpu_bound": round(counts["resources"] / server_cpu, 1) if server_cpu else None,
    }
    started.stop_all()
    log.close()
    result["stored"] = stored(db)
    return result


def machine_facts() -> dict:
    facts = {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        facts["load_average"] = list(os.getloadavg())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        facts["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return facts


def print_report(doc: dict) -> None:
    print(
        f"\ndata: {doc['data']} ({doc['bundles']} Bundles, {doc['entries']} entries); cores: {doc['machine']['cores']}"
    )
    print(f"{'run':<26}{'resources':>10}{'wall s':>9}{'res/s':>9}{'CPU s':>9}{'others':>8}{'CPU-bound res/s':>17}")
    cli = doc.get("cli")
    if cli:
        print(
            f"{'fhir-server load':<26}{cli['resources']:>10}{cli['wall_s']:>9.1f}{cli['rate_wall']:>9.0f}"
            f"{cli['cpu_tree_s']:>9.1f}{cli['others_cpu_share']:>8.0%}{cli['rate_cpu_bound']:>17.0f}"
        )
        print(f"    main process CPU {cli['cpu_main_s']:.1f} s, workers {cli['cpu_workers_s']:.1f} s;"
              f" loader's own rate {cli['rate_loader']:.0f}/s; stored {cli['stored']}")  # fmt: skip
    web = doc.get("http")
    if web:
        print(
            f"{'POST / x' + str(web['clients']) + ' clients':<26}{web['resources']:>10}{web['wall_s']:>9.1f}"
            f"{web['rate_wall']:>9.0f}{web['cpu_server_s']:>9.1f}{web['others_cpu_share']:>8.0%}"
            f"{(web['rate_cpu_bound'] or 0):>17.0f}"
        )
        print(f"    server CPU {web['cpu_server_s']:.1f} s, client CPU {web['cpu_client_s']:.1f} s;"
              f" failed requests {web['failed']}; stored {web['stored']}")  # fmt: skip
    print(f"target: >= {TARGET:.0f} resources/s (fhir-server load, fresh SQLite)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a .tgz of transaction Bundles")
    parser.add_argument("--limit", type=int, help="only the first N Bundles of the archive")
    parser.add_argument("--workers", type=int, help="fhir-server load --workers (default: its own default)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    started = Started()
    data = bundles(args.data, args.limit)
    doc: dict = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(args.data) + (f" (first {args.limit})" if args.limit else ""),
        "bundles": len(data),
        "entries": sum(entry_count(body) for _, body in data),
        "machine": machine_facts(),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp_name:
            tmp = Path(tmp_name)
            source = write_subset(data, tmp / "subset.tgz") if args.limit else args.data
            if not args.skip_cli:
                print("fhir-server load …", flush=True)
                doc["cli"] = run_cli(started, source, tmp, args.workers, cores)
            if not args.skip_http:
                print(f"POST / with {args.clients} clients …", flush=True)
                doc["http"] = run_http(started, data, tmp, args.clients, cores)
    finally:
        started.stop_all()
    print_report(doc)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"load-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

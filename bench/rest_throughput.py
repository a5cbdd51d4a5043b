#!/usr/bin/env python3
"""REST throughput of the FHIR server against a bare Starlette baseline, measured with wrk in one run.

1. Starts the real server (``fhir-server serve``, 1 worker) on a throw-away SQLite database (or
   ``--store``), waits for ``GET /metadata``, creates one realistic French Patient (INS identifier,
   accents, address, telecom…) and fetches its exact bytes.
2. Starts ``bench/bare_app.py`` (Starlette, one route returning those bytes) under uvicorn with the
   server's options (1 worker, no access log, loop auto = uvloop, http httptools).
3. Reads: ``wrk`` on ``GET /Patient/{id}`` of both → requests/s, latency p50/p99, ratio ours/bare
   (target ≥ 0.7).
4. Creates: ``wrk`` with ``bench/wrk_create.lua`` (``POST /Patient``, a fresh INS value per request) →
   creates/s (target ≥ 1,000/s on SQLite, one worker), non-201 answers counted; the count is checked
   against ``GET /Patient/_history?_count=0`` (``total``).
5. Prints a table and writes ``bench/results/rest_throughput-<timestamp>.json``.

Both servers (and the MongoDB stand-in if used) are stopped at the end, also on error or Ctrl-C.
wrk and the servers share the machine's cores (nothing is pinned): the report gives ``nproc``, the wrk
settings and the CPU each process used during each run.

Usage (from the repository root, project venv)::

    .venv/bin/python bench/rest_throughput.py                     # -t2 -c32 -d10s, SQLite in a temp dir
    .venv/bin/python bench/rest_throughput.py --duration 30 --connections 64
    .venv/bin/python bench/rest_throughput.py --store secantus    # the tests' SecantusDB stand-in (not MongoDB)
    .venv/bin/python bench/rest_throughput.py --store 'mongodb://127.0.0.1:27017/?replicaSet=rs0'
    .venv/bin/python bench/rest_throughput.py --profile           # + py-spy profiles of our server
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
READ_SCRIPT = BENCH / "wrk_read.lua"
CREATE_SCRIPT = BENCH / "wrk_create.lua"
SECANTUSD = REPO / ".venv-secantus" / "bin" / "secantusd-py"  # .ci/install-secantus; GPL-2.0, reached over the wire
MONGO_SIDECAR = REPO / "tests" / "mongo_sidecar.py"

FHIR_JSON = "application/fhir+json"
READ_RATIO_TARGET = 0.7
CREATES_TARGET = 1000.0
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"  # INS-NIR (identifiant national de santé)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILE_RATE = 250  # py-spy samples per second


def patient(ins: str, ipp: str) -> dict:
    """A realistic French Patient (~1.6 KB once stored): INS-NIR + IPP identifiers, accents everywhere."""
    return {
        "resourceType": "Patient",
        "meta": {"profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"]},
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "Besançon", "postalCode": "25000", "country": "FRA"},
            }
        ],
        "identifier": [
            {
                "use": "official",
                "type": {
                    "coding": [
                        {
                            "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
                            "code": "INS-NIR",
                            "display": "NIR définitif",
                        }
                    ]
                },
                "system": INS_SYSTEM,
                "value": ins,
            },
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "PI",
                            "display": "Patient internal identifier",
                        }
                    ]
                },
                "system": "urn:oid:1.2.250.1.71.4.2.7.1.1000000001",
                "value": ipp,
            },
        ],
        "active": True,
        "name": [
            {"use": "official", "family": "Lefèvre-Bérénger", "given": ["Hélène", "Françoise", "Zoé"]},
        ],
        "telecom": [
            {"system": "phone", "value": "+33 3 81 12 34 56", "use": "home"},
            {"system": "phone", "value": "+33 6 12 34 56 78", "use": "mobile", "rank": 1},
            {"system": "email", "value": "helene.lefevre-berenger@exemple.fr", "use": "home"},
        ],
        "gender": "female",
        "birthDate": "1978-03-14",
        "address": [
            {
                "use": "home",
                "type": "physical",
                "line": ["12 rue de l'Église", "Bâtiment B, 3ᵉ étage"],
                "city": "Saint-Étienne",
                "district": "Loire",
                "postalCode": "42000",
                "country": "FRA",
            }
        ],
        "maritalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                    "code": "M",
                    "display": "Married",
                }
            ]
        },
        "communication": [
            {
                "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "fr-FR", "display": "Français"}]},
                "preferred": True,
            }
        ],
    }


# --- processes ---------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path | None = None

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far (0 once it is gone)."""
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def log_tail(self, n: int = 3000) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-n:]


@dataclass
class Processes:
    """Everything this run started; ``stop_all`` ends each of them (by its own process group)."""

    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], *, log: Path | None, env: dict | None = None, **kw) -> Proc:
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        try:
            popen = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True, **kw
            )
        finally:
            if log:
                out.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_piped(self, name: str, cmd: list[str]) -> Proc:
        """A process talking over pipes (the MongoDB stand-in prints its URI, dies when stdin closes)."""
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        proc = Proc(name, popen)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop_process_group(proc.popen)
        self.procs.clear()


def stop_process_group(popen: subprocess.Popen) -> None:
    """SIGTERM the process's own group (it was started in a new session), SIGKILL after 10 s."""
    if popen.poll() is None:
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()
        with contextlib.suppress(ProcessLookupError):  # its own session/group: the server and nothing else
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=10)
    for stream in (popen.stdout, popen.stdin):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _terminate(signum, frame):  # SIGTERM/SIGHUP → unwind through the finally that stops the servers
    raise SystemExit(128 + signum)


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


def py_spy() -> str | None:
    """py-spy next to this interpreter (a venv that is not activated) or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- HTTP --------------------------------------------------------------------------------------------


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, body) without raising on HTTP error statuses."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def wait_ready(url: str, proc: Proc, timeout: float) -> float:
    """Poll ``url`` until it answers 200; fail early if the process dies. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            status, _, _ = http("GET", url, timeout=2)
            if status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f}s:\n{proc.log_tail()}")


def history_total(base: str) -> int:
    status, _, body = http("GET", f"{base}/Patient/_history?_count=0", headers={"Accept": FHIR_JSON})
    if status != 200:
        raise RuntimeError(f"GET /Patient/_history?_count=0 answered {status}: {body[:500]!r}")
    return json.loads(body)["total"]


# --- wrk ---------------------------------------------------------------------------------------------


@dataclass
class WrkSettings:
    threads: int
    connections: int
    duration: int
    timeout: str

    def flags(self, duration: int | None = None) -> list[str]:
        return [
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{duration or self.duration}s",
            "--timeout",
            self.timeout,
        ]

    def describe(self) -> str:
        return f"wrk -t{self.threads} -c{self.connections} -d{self.duration}s --timeout {self.timeout}"


def run_wrk(
    settings: WrkSettings,
    script: Path,
    url: str,
    *,
    script_args: list[str] = (),
    duration: int | None = None,
    watch: list[Proc] = (),
    profile: Path | None = None,
    profile_pid: int | None = None,
    profile_native: bool = False,
    headers: list[str] = (),
) -> dict:
    """One wrk run; returns the script's BENCH_JSON plus req/s and the CPU each watched process used."""
    cmd = ["wrk", *settings.flags(duration), *(f for h in headers for f in ("-H", h)), "-s", str(script), url]
    if script_args:
        cmd += ["--", *script_args]
    spy = None
    if profile is not None:
        spy = subprocess.Popen(
            [
                py_spy() or "py-spy", "record", "--pid", str(profile_pid), "--rate", str(PROFILE_RATE),
                "--nolineno", "--format", "raw", "--output", str(profile),
                "--duration", str(duration or settings.duration),
                *(["--native"] if profile_native else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)  # let it attach
    cpu_before = {p.name: p.cpu_seconds() for p in watch}
    machine_before = machine_busy_jiffies()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=(duration or settings.duration) + 60)
    finally:
        if spy is not None:
            try:
                spy.wait(timeout=(duration or settings.duration) + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
    wall = time.monotonic() - wall
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_after = {p.name: p.cpu_seconds() for p in watch}
    machine_after = machine_busy_jiffies()
    stdout = done.stdout.decode(errors="replace")
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        stderr = done.stderr.decode(errors="replace")
        raise RuntimeError(f"wrk failed ({done.returncode}): {' '.join(cmd)}\n{stdout}\n{stderr}")
    result = json.loads(line[len("BENCH_JSON ") :])
    seconds = result["duration_us"] / 1e6
    result["requests_per_s"] = result["requests"] / seconds
    result["wrk_stdout"] = stdout.replace(line, "").strip()
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    if spy is not None:  # py-spy is a child too: its CPU is not wrk's
        wrk_cpu = None
    result["cpu_percent_of_one_core"] = {
        **({"wrk": round(100 * wrk_cpu / wall, 1)} if wrk_cpu is not None else {}),
        **{name: round(100 * (cpu_after[name] - cpu_before[name]) / seconds, 1) for name in cpu_before},
    }
    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    if total:
        # Everything on the machine (all cores) during the run, in % of one core, like the figures above:
        # the difference with wrk + server is other load (other processes, kernel threads).
        result["cpu_percent_of_one_core"]["machine"] = round(100 * (os.cpu_count() or 1) * busy / total, 1)
    if watch and result["requests"]:
        # CPU the server under test spent per answered request: less moved than req/s by other load on
        # the machine (a starved server answers fewer requests, but spends about the same CPU on each).
        server = watch[0].name
        result["server_cpu_us_per_request"] = round(
            (cpu_after[server] - cpu_before[server]) * 1e6 / result["requests"], 1
        )
    if spy is not None:
        result["profile"] = str(profile)
        if spy.returncode != 0:
            result["profile_error"] = spy.stderr.read().decode(errors="replace")[-2000:]
    return result


# --- py-spy raw (collapsed) profiles -----------------------------------------------------------------


def _package(frame: str) -> str:
    """``f (fastapi/routing.py)`` → ``fastapi``; ``sqlite3VdbeExec (libsqlite3.so.0)`` → ``libsqlite3``."""
    where = frame.rpartition(" (")[2].rstrip(")")
    if "/" in where:
        return where.split("/", 1)[0]
    if where.endswith(".py"):
        return where.removesuffix(".py")
    return where.split(".", 1)[0] or "?"


def summarize_profile(path: Path, top: int = 25) -> dict:
    """Self and inclusive % per function (and self % per package) from py-spy's collapsed stacks.

    The inclusive list leaves out the frames present in more than 90 % of the samples (the event loop and
    the ASGI middleware chain every request goes through), which would crowd the useful lines out.
    """
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    package_counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        total += n
        if not frames:
            continue
        self_counts[frames[-1]] += n
        package_counts[_package(frames[-1])] += n
        for frame in set(frames):
            incl_counts[frame] += n

    def pct(pairs) -> list[tuple[str, float]]:
        return [(name, round(100 * c / total, 1)) for name, c in pairs] if total else []

    inclusive = [(f, c) for f, c in incl_counts.most_common() if c <= 0.9 * total][:top]
    return {
        "samples": total,
        "self": pct(self_counts.most_common(top)),
        "self_by_package": pct(package_counts.most_common(15)),
        "inclusive": pct(inclusive),
    }


def profile_busy(summary: dict, seconds: float) -> float:
    """Share of the run the server's thread was on CPU: py-spy drops idle samples (no --idle)."""
    return summary["samples"] / (PROFILE_RATE * seconds) if seconds else 0.0


# --- machine facts -----------------------------------------------------------------------------------


def machine_facts() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    versions = {}
    dists = ("uvicorn", "starlette", "fastapi", "uvloop", "httptools", "orjson", "pydantic", "fhir.resources")
    for dist in dists:
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
        "wrk": wrk_version[0] if wrk_version else None,
        "packages": versions,
        "git_commit": commit.stdout.strip() or None,
        "git_dirty": bool(dirty.stdout.strip()),
    }


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password or parts.username:
        return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
    return url


# --- the run -----------------------------------------------------------------------------------------


def start_ours(procs: Processes, tmp: Path, store: str, timeout: float, auth: bool = False) -> tuple[Proc, str]:
    port = free_port()
    exe = Path(sys.executable).parent / "fhir-server"
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "fhir_server.cli"]
    cmd = [
        *cli,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--store",
        store,
        "--workers",
        "1",
        "--auth",
        "on" if auth else "off",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    proc = procs.start("ours", cmd, log=tmp / "ours.log", env=env)
    base = f"http://127.0.0.1:{port}"
    waited = wait_ready(f"{base}/metadata", proc, timeout)
    print(f"  our server ready in {waited:.1f}s (pid {proc.popen.pid}, port {port})", flush=True)
    return proc, base


def start_bare(procs: Processes, tmp: Path, body_file: Path, timeout: float) -> tuple[Proc, str]:
    port = free_port()
    # The server's uvicorn options (fhir_server/cli.py): 1 worker, no access log, loop/http auto, which
    # with uvicorn[standard] means uvloop + httptools; http is forced here so a missing httptools fails.
    cmd = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH), "bare_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--no-access-log", "--loop", "auto", "--http", "httptools",
    ]  # fmt: skip
    env = {**os.environ, "BENCH_BARE_BODY_FILE": str(body_file)}
    proc = procs.start("bare", cmd, log=tmp / "bare.log", env=env)
    base = f"http://127.0.0.1:{port}"
    waited = wait_ready(f"{base}/metadata", proc, timeout)
    print(f"  bare Starlette ready in {waited:.1f}s (pid {proc.popen.pid}, port {port})", flush=True)
    return proc, base


def start_secantus(procs: Processes) -> str:
    if not SECANTUSD.exists():
        raise RuntimeError("the SecantusDB stand-in is not installed: run .ci/install-secantus")
    proc = procs.start_piped("secantus", [sys.executable, str(MONGO_SIDECAR), str(SECANTUSD)])
    line = proc.popen.stdout.readline().strip()
    if not line.startswith("mongodb://"):
        raise RuntimeError(f"SecantusDB stand-in did not start (got {line!r})")
    parts = urlsplit(line)
    return urlunsplit(parts._replace(path="/fhir_bench"))


def compact(resource: dict) -> bytes:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()


def create_patient(base: str) -> tuple[str, bytes]:
    body = compact(patient("278031425012345", "IPP-0000001"))
    status, headers, answer = http("POST", f"{base}/Patient", body, {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
    if status != 201:
        raise RuntimeError(f"POST /Patient answered {status}: {answer[:1000]!r}")
    id_ = headers["Location"].split("/Patient/", 1)[1].split("/", 1)[0]
    status, headers, stored = http("GET", f"{base}/Patient/{id_}", headers={"Accept": FHIR_JSON})
    if status != 200:
        raise RuntimeError(f"GET /Patient/{id_} answered {status}")
    return id_, stored


def fmt_ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def print_report(doc: dict) -> None:
    m, w = doc["machine"], doc["wrk"]
    print()
    print(f"machine: nproc={m['nproc']} ({m['cpu_model']}), Python {m['python']}, {m['wrk']}")
    print(
        f"wrk: -t{w['threads']} -c{w['connections']} -d{w['duration_s']}s (warm-up {w['warmup_s']}s before "
        "each read run); wrk and the server share the same cores, nothing pinned"
    )
    print(f"store: {doc['store']}{'  (' + doc['store_note'] + ')' if doc.get('store_note') else ''}")
    print(f"patient: {doc['patient_bytes']} bytes")
    print()
    header = (
        f"{'run':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}{'CPU µs/req':>12}"
        f"  CPU, % of one core (machine = all {m['nproc']} cores, everything)"
    )
    print(header)
    print("-" * len(header))

    def row(label: str, r: dict) -> None:
        errors = sum(r["errors"].values())
        lat = r["latency_us"]
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_percent_of_one_core"].items())
        per_request = r.get("server_cpu_us_per_request")
        print(
            f"{label:<26}{r['requests_per_s']:>10,.0f}{fmt_ms(lat['p50']):>9}{fmt_ms(lat['p99']):>9}"
            f"{fmt_ms(lat['max']):>9}{errors:>8}{per_request or 0:>12,.0f}  {cpu}"
        )

    reads = doc.get("reads")
    if reads:
        row("GET /Patient/{id} bare", reads["bare"])
        row("GET /Patient/{id} ours", reads["ours"])
    creates = doc.get("creates")
    if creates:
        row("POST /Patient ours", creates["wrk"])
    print()
    if reads:
        ok = "OK" if reads["target_met"] else "MISSED"
        print(f"read ratio ours/bare: {reads['ratio']:.2f} (target ≥ {READ_RATIO_TARGET}) {ok}")
        if reads.get("cpu_ratio"):
            print(
                f"  server CPU per read: bare {reads['bare']['server_cpu_us_per_request']:.0f} µs, ours "
                f"{reads['ours']['server_cpu_us_per_request']:.0f} µs → bare/ours {reads['cpu_ratio']:.2f} "
                "(the same comparison, less sensitive to other load on the machine)"
            )
    if creates:
        ok = "OK" if creates["target_met"] else "MISSED"
        print(f"creates: {creates['creates_per_s']:,.0f}/s (target ≥ {CREATES_TARGET:,.0f}/s) {ok}")
        print(
            f"  201 answers counted by wrk: {creates['created_201']:,}; non-201: {creates['non_201']}"
            + (f" (statuses {creates['non_201_statuses']}; first body {creates['non_201_sample'][:200]!r})"
               if creates["non_201"] else "")
        )  # fmt: skip
        print(
            f"  history total before {creates['history_total_before']:,}, "
            f"after {creates['history_total_after']:,}: "
            f"+{creates['history_delta']:,} stored ({creates['history_check']})"
        )
    for name, summary in doc.get("profiles", {}).items():
        print(
            f"\npy-spy profile, {name}: {summary['samples']} on-CPU samples at {PROFILE_RATE}/s "
            f"(≈{summary['busy_share_estimate']:.0%} of the run busy); % of on-CPU samples:"
        )
        print("  self, by package: " + ", ".join(f"{p} {v:.1f}" for p, v in summary["self_by_package"]))
        print("  self, by function:")
        for fn, pct in summary["self"][:15]:
            print(f"    {pct:5.1f}%  {fn}")
        print("  inclusive (frames in > 90 % of the samples left out):")
        for fn, pct in summary["inclusive"][:25]:
            print(f"    {pct:5.1f}%  {fn}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    parser.add_argument("--timeout", default="2s", help="wrk --timeout (default 2s, wrk's own default)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of un-measured wrk before each read run (default 2)"
    )
    parser.add_argument(
        "--store",
        default="sqlite",
        help="'sqlite' (default: a fresh database in a temp dir), 'secantus' (the test suite's stand-in, "
        "NOT MongoDB), or a store URL (sqlite:///…, mongodb://…; a mongodb URL without a database gets a "
        "fresh fhir_bench_<hex> database, dropped afterwards)",
    )
    parser.add_argument("--skip-reads", action="store_true", help="only the create benchmark")
    parser.add_argument("--skip-creates", action="store_true", help="only the read benchmark")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also record the servers with py-spy during their runs (numbers of those runs are lowered by "
        "the sampling); collapsed stacks go to bench/results/",
    )
    parser.add_argument("--native", action="store_true", help="with --profile: native (C) frames too (py-spy --native)")
    parser.add_argument("--start-timeout", type=float, default=120, help="seconds to wait for each server")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)", file=sys.stderr)
        return 2
    if args.profile and py_spy() is None:
        print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    settings = WrkSettings(args.threads, args.connections, args.duration, args.timeout)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    doc: dict = {
        "benchmark": "rest_throughput",
        "timestamp": stamp,
        "machine": machine_facts(),
        "wrk": {
            "threads": args.threads,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "timeout": args.timeout,
            "command": settings.describe(),
            "pinning": "none: wrk and the servers share all cores",
        },
        "targets": {"read_ratio": READ_RATIO_TARGET, "creates_per_s": CREATES_TARGET},
    }
    procs = Processes()
    drop_database: tuple[str, str] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="fhir-bench-") as tmp_name:
            tmp = Path(tmp_name)
            if args.store == "sqlite":
                store = f"sqlite:///{tmp / 'bench.db'}"
                doc["store_note"] = "fresh SQLite database in a temp dir (WAL, synchronous=NORMAL)"
            elif args.store == "secantus":
                print("starting the SecantusDB stand-in (NOT MongoDB: its timings are not MongoDB's) …", flush=True)
                store = start_secantus(procs)
                doc["store_note"] = "SecantusDB stand-in, NOT MongoDB: numbers say nothing about MongoDB"
            else:
                store = args.store
                parts = urlsplit(store)
                if parts.scheme.startswith("mongodb") and not parts.path.strip("/"):
                    name = f"fhir_bench_{uuid.uuid4().hex[:12]}"
                    store = urlunsplit(parts._replace(path=f"/{name}"))
                    drop_database = (store, name)
            doc["store"] = redact(store)

            print(f"starting our server (store {redact(store)}) …", flush=True)
            ours, ours_base = start_ours(procs, tmp, store, args.start_timeout)
            watch_ours = [ours] + [p for p in procs.procs if p.name == "secantus"]
            id_, stored = create_patient(ours_base)
            doc["patient_bytes"] = len(stored)
            doc["patient_id"] = id_
            body_file = tmp / "patient.json"
            body_file.write_bytes(stored)

            if not args.skip_reads:
                print("starting the bare Starlette app …", flush=True)
                bare, bare_base = start_bare(procs, tmp, body_file, args.start_timeout)
                status, _headers, bare_body = http("GET", f"{bare_base}/Patient/{id_}")
                if status != 200 or bare_body != stored:
                    raise RuntimeError("the bare app does not answer the stored Patient bytes")
                reads: dict = {"path": f"/Patient/{id_}"}
                for name, proc, base, watch in (
                    ("bare", bare, bare_base, [bare]),
                    ("ours", ours, ours_base, watch_ours),
                ):
                    url = f"{base}/Patient/{id_}"
                    if args.warmup:
                        print(f"  warm-up {name} ({args.warmup}s) …", flush=True)
                        run_wrk(settings, READ_SCRIPT, url, duration=args.warmup)
                    print(f"  reads {name}: {settings.describe()} {url}", flush=True)
                    profile = args.results_dir / f"rest_throughput-{stamp}-read-{name}.collapsed"
                    reads[name] = run_wrk(
                        settings,
                        READ_SCRIPT,
                        url,
                        watch=watch,
                        profile=profile if args.profile else None,
                        profile_pid=proc.popen.pid,
                        profile_native=args.native,
                    )
                    print(f"    {reads[name]['requests_per_s']:,.0f} req/s", flush=True)
                stop_process_group(bare.popen)  # idle from here on; stopped again (no-op) at the end
                reads["ratio"] = reads["ours"]["requests_per_s"] / reads["bare"]["requests_per_s"]
                reads["target_met"] = reads["ratio"] >= READ_RATIO_TARGET
                if reads["ours"].get("server_cpu_us_per_request") and reads["bare"].get("server_cpu_us_per_request"):
                    reads["cpu_ratio"] = (
                        reads["bare"]["server_cpu_us_per_request"] / reads["ours"]["server_cpu_us_per_request"]
                    )
                doc["reads"] = reads

            if not args.skip_creates:
                template = tmp / "patient-template.json"
                template.write_bytes(compact(patient("2__SEQ__", "IPP-__SEQ__")))
                before = history_total(ours_base)
                url = f"{ours_base}/Patient"
                print(f"  creates ours: {settings.describe()} -s {CREATE_SCRIPT.name} POST {url}", flush=True)
                profile = args.results_dir / f"rest_throughput-{stamp}-create-ours.collapsed"
                result = run_wrk(
                    settings,
                    CREATE_SCRIPT,
                    url,
                    script_args=[str(template)],
                    watch=watch_ours,
                    profile=profile if args.profile else None,
                    profile_pid=ours.popen.pid,
                    profile_native=args.native,
                )
                time.sleep(0.5)  # let the requests in flight when wrk stopped finish
                after = history_total(ours_base)
                seconds = result["duration_us"] / 1e6
                delta = after - before
                extra = delta - result["created_201"]
                if extra == 0:
                    check = "matches the 201s counted"
                elif 0 < extra <= args.connections:
                    check = (
                        f"{extra} more than the 201s counted: requests in flight when wrk stopped "
                        f"(at most one per connection, {args.connections})"
                    )
                else:
                    check = f"MISMATCH: {extra:+} against the 201s counted"
                doc["creates"] = {
                    "wrk": result,
                    "creates_per_s": result["created_201"] / seconds,
                    "created_201": result["created_201"],
                    "non_201": result["non_201"],
                    "non_201_statuses": result["non_201_statuses"].strip(),
                    "non_201_sample": result["non_201_sample"],
                    "history_total_before": before,
                    "history_total_after": after,
                    "history_delta": delta,
                    "history_check": check,
                    "history_check_ok": 0 <= extra <= args.connections,
                    "body_bytes": len(template.read_bytes().replace(b"__SEQ__", b"0" * 13)),
                }
                doc["creates"]["target_met"] = doc["creates"]["creates_per_s"] >= CREATES_TARGET
            doc["server_log_tail"] = ours.log_tail(2000)
            if drop_database:
                _drop_mongo_database(*drop_database)
                drop_database = None
    finally:
        procs.stop_all()
        if drop_database:
            _drop_mongo_database(*drop_database)

    if args.profile:
        doc["profiles"] = {}
        runs = (
            ("reads, bare Starlette", doc.get("reads", {}).get("bare")),
            ("reads, our server", doc.get("reads", {}).get("ours")),
            ("creates, our server", doc.get("creates", {}).get("wrk")),
        )
        for label, run in runs:
            if run and run.get("profile") and Path(run["profile"]).exists():
                summary = summarize_profile(Path(run["profile"]))
                summary["busy_share_estimate"] = round(profile_busy(summary, args.duration), 2)
                doc["profiles"][label] = summary
    out = args.results_dir / f"rest_throughput-{stamp}.json"
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print_report(doc)
    print(f"\nresults: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


def _drop_mongo_database(url: str, name: str) -> None:
    try:
        from pymongo import MongoClient

        client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=5000)
        try:
            client.drop_database(name)
        finally:
            client.close()
    except Exception as exc:  # a left-over bench database is worth a warning, not a failed run
        print(f"warning: could not drop the bench database {name}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

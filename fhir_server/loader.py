"""``fhir-server load``: bulk ingestion of Bundles and NDJSON files into a store.

Inputs: JSON files (a transaction, batch or collection Bundle, or one resource), NDJSON files (one resource
per line), directories (walked recursively, in name order) and tar archives (``.tgz``, ``.tar.gz``, ``.tar``,
read as a stream: one member in memory at a time, nothing extracted to disk).

Semantics are those of ``POST [base]`` (``interactions.bundles``): a transaction Bundle is one atomic unit
with the transaction rules (identities, reference rewriting, conditional references, ``ifNoneExist``); a
batch Bundle runs entry by entry; a collection Bundle, a lone resource and each NDJSON line are
"update-as-create" entries: ``PUT Type/id`` when the resource has an id, else ``POST Type``. GET/HEAD
entries of a batch have no effect on a load and are skipped.

How it goes fast without a second implementation of those rules: the expensive, store-independent part of
every unit (JSON parse, validation, identities, reference rewriting, stamping, serialization, search index
entries: ~90 % of the CPU) runs in worker processes, *speculatively*: the worker runs the real
``bundles.transaction`` / ``bundles.batch`` against a recording store that answers every read "absent"
(a fresh resource, no conditional match) and records the reads and the writes in order. The main process
then replays that log inside one store unit of work: each recorded read is asked again of the real store,
and if any answer differs (the resource exists, a conditional reference matches…) the unit is rolled back
and run again for real with ``bundles`` on the main process, in input order. So a unit is always either the
exact execution ``POST [base]`` would have made, or not applied at all. Timestamps are taken at replay time
(``meta.lastUpdated`` and the ``_lastUpdated`` index entry are re-stamped), as a normal write takes them.

On SQLite the replay of a group of units (~2,000 resources) runs in one call on the store's writer thread,
inside one store unit of work (one commit per group). A unit whose log only asks "is this resource
absent?" (creates, update-as-create) is checked first and then written without a SAVEPOINT of its own; one
with conditional searches replays in order inside a SAVEPOINT. While loading, the writer connection uses
``PRAGMA temp_store=FILE``: with the store's ``MEMORY`` setting, statement and savepoint journals of big
units of work make every write ~3x more expensive (foreign keys on); it has nothing to do with durability
and is restored afterwards. Other stores replay through the ``Transaction`` API, one unit at a time.

Memory stays bounded: inputs are read one file (or archive member, or run of NDJSON lines) at a time, and
at most ``4 * workers + 2`` of them are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import multiprocessing
import os
import sys
import tarfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

from .config import Settings
from .errors import FhirError, Issue, bad_request
from .fhirjson import loads
from .instant import now_us, to_instant
from .interactions import bundles
from .interactions.context import Context
from .store import IndexEntry, ResourceVersion, Store, Transaction, VersionConflict
from .validation import R4_RESOURCE_TYPES

JSON_SUFFIXES = (".json",)
NDJSON_SUFFIXES = (".ndjson",)
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")
NDJSON_CHUNK_LINES = 500  # lines per work unit sent to a worker
NDJSON_CHUNK_BYTES = 4 << 20
GROUP_RESOURCES = 2000  # resources per store transaction (SQLite: one COMMIT per group)

# Kinds of requests a file yields, and what a worker answers for each.
TRANSACTION, ENTRY, FAILED = "transaction", "entry", "failed"
OPS, ERROR, REDO = "ops", "error", "redo"
# Recorded operations (the speculation log).
PUT, CURRENT, VERSION, FIND = "put", "current", "version", "find"


# --- inputs ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Job:
    """A piece of one input file: a whole JSON file, or a run of NDJSON lines. What a worker receives."""

    seq: int
    label: str  # the file ("dir/a.json", "data.tgz:member.json")
    kind: str  # "json" | "ndjson" | "unreadable"
    data: Any  # json: bytes; ndjson: tuple of lines; unreadable: the message
    first_line: int = 1
    last: bool = True  # last piece of its file
    weight: int = 0  # input bytes it accounts for (progress)


@dataclass
class Inputs:
    plain: list[Path] = field(default_factory=list)  # .json / .ndjson files
    archives: list[Path] = field(default_factory=list)
    total_bytes: int = 0


def _kind_of(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(JSON_SUFFIXES):
        return "json"
    if lower.endswith(NDJSON_SUFFIXES):
        return "ndjson"
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    return None


def find_inputs(paths: Sequence[str | os.PathLike]) -> tuple[Inputs, list[str]]:
    """The files to load (directories walked recursively, in name order) and the unusable arguments."""
    found = Inputs()
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = list(_walk(path))
        elif path.is_file():
            if _kind_of(path.name) is None:
                problems.append(f"{path}: not a .json, .ndjson, .tgz, .tar.gz or .tar file")
                continue
            files = [path]
        else:
            problems.append(f"{path}: no such file or directory")
            continue
        for file in files:
            (found.archives if _kind_of(file.name) == "archive" else found.plain).append(file)
            found.total_bytes += file.stat().st_size
    return found, problems


def _iter_jobs(paths: Sequence[str | os.PathLike]) -> Iterator[Job]:
    """Every input, as jobs, in input order (reads one file or archive member at a time)."""
    seq = 0
    for raw in paths:
        path = Path(raw)
        files = _walk(path) if path.is_dir() else [path]
        for file in files:
            kind = _kind_of(file.name)
            if kind is None:
                continue
            for job in _file_jobs(file, kind):
                job.seq = seq
                seq += 1
                yield job


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith(".") and _kind_of(name) is not None:
                yield Path(directory) / name


def _file_jobs(path: Path, kind: str) -> Iterator[Job]:
    label = str(path)
    try:
        if kind == "json":
            data = path.read_bytes()
            yield Job(0, label, "json", data, weight=len(data))
        elif kind == "ndjson":
            with path.open("rb") as stream:
                yield from _ndjson_jobs(label, stream, lambda n: n)
        else:
            yield from _archive_jobs(path)
    except (OSError, tarfile.TarError, EOFError) as exc:
        yield Job(0, label, "unreadable", f"cannot read: {exc}")


def _ndjson_jobs(label: str, stream: io.BufferedIOBase, weight: Callable[[int], int]) -> Iterator[Job]:
    lines: list[bytes] = []
    size = 0
    first = 1
    for line_no, line in enumerate(stream, 1):
        lines.append(line)
        size += len(line)
        if len(lines) >= NDJSON_CHUNK_LINES or size >= NDJSON_CHUNK_BYTES:
            yield Job(0, label, "ndjson", tuple(lines), first, last=False, weight=weight(size))
            lines, size, first = [], 0, line_no + 1
    yield Job(0, label, "ndjson", tuple(lines), first, last=True, weight=weight(size))


def _archive_jobs(path: Path) -> Iterator[Job]:
    with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        position = 0

        def consumed(_: int) -> int:  # compressed bytes read since the previous piece
            nonlocal position
            now = raw.tell()
            delta, position = now - position, now
            return delta

        for member in archive:
            kind = _kind_of(member.name)
            if not member.isfile() or kind not in ("json", "ndjson") or Path(member.name).name.startswith("."):
                continue
            label = f"{path}:{member.name}"
            stream = archive.extractfile(member)
            assert stream is not None
            if kind == "json":
                data = stream.read()
                yield Job(0, label, "json", data, weight=consumed(0))
            else:
                yield from _ndjson_jobs(label, stream, consumed)


def count_archive_members(path: Path) -> int:
    with tarfile.open(path, mode="r|*") as archive:
        return sum(
            1
            for m in archive
            if m.isfile() and _kind_of(m.name) in ("json", "ndjson") and not Path(m.name).name.startswith(".")
        )


# --- what a file asks for: the same on the workers and on the main process (re-runs) ------------------


def requests(job: Job, settings: Settings) -> Iterator[tuple[str, str, Any]]:
    """(where, kind, payload) for each unit of a job: TRANSACTION → entries, ENTRY → one entry, FAILED →
    FhirError. Deterministic: the main process regenerates it to re-run a unit."""
    if job.kind == "unreadable":
        yield "", FAILED, bad_request(job.data)
        return
    if job.kind == "ndjson":
        for line_no, line in enumerate(job.data, job.first_line):
            if not line.strip():
                continue
            where = f"line {line_no}"
            try:
                yield where, ENTRY, _entry_for(line_no, loads(line, max_depth=settings.max_json_depth))
            except FhirError as exc:
                yield where, FAILED, exc
        return
    try:
        body = loads(job.data, max_depth=settings.max_json_depth)
    except FhirError as exc:
        yield "", FAILED, exc
        return
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        try:
            yield "", ENTRY, _entry_for(0, body)
        except FhirError as exc:
            yield "", FAILED, exc
        return
    kind = body.get("type")
    if kind in ("transaction", "batch"):
        try:
            _, entries = bundles.parse_entries(body, "", settings.max_bundle_entries)
        except FhirError as exc:
            yield "", FAILED, exc
            return
        if kind == "transaction":
            yield "", TRANSACTION, entries
        else:
            for entry in entries:
                if entry.method not in ("GET", "HEAD"):
                    yield f"Bundle.entry[{entry.index}]", ENTRY, entry
    elif kind == "collection":
        raw = body.get("entry") or []
        if not isinstance(raw, list):
            yield "", FAILED, bad_request("Bundle.entry must be an array", expression=("Bundle.entry",))
            return
        for index, item in enumerate(raw):
            where = f"Bundle.entry[{index}]"
            try:
                resource = item.get("resource") if isinstance(item, dict) else None
                if resource is None:
                    raise bad_request(f"{where} has no resource", expression=(f"{where}.resource",))
                yield where, ENTRY, _entry_for(index, resource)
            except FhirError as exc:
                yield where, FAILED, exc
    else:
        problem = f"Bundle.type {kind!r} cannot be loaded: transaction, batch or collection"
        yield "", FAILED, bad_request(problem, expression=("Bundle.type",))


def _entry_for(index: int, resource: object) -> bundles.EntryRequest:
    """A lone resource as a batch entry: ``PUT Type/id`` (update-as-create) with an id, ``POST Type`` without."""
    if not isinstance(resource, dict):
        raise bad_request("A resource must be a JSON object")
    type_ = resource.get("resourceType")
    if not isinstance(type_, str) or type_ not in R4_RESOURCE_TYPES:
        raise bad_request(f"resourceType {type_!r} is not an R4 resource type", expression=("resourceType",))
    id_ = resource.get("id")
    if id_ is None:
        return bundles.EntryRequest(index, "POST", type_, resource=resource, url=type_)
    if not isinstance(id_, str) or not id_ or "/" in id_:
        raise bad_request(f"id {id_!r} is not a valid resource id", expression=("id",))
    return bundles.EntryRequest(index, "PUT", type_, id=id_, resource=resource, url=f"{type_}/{id_}")


def write_count(kind: str, payload: Any) -> int:
    if kind == TRANSACTION:
        return sum(1 for e in payload if e.method in ("POST", "PUT", "DELETE"))
    return 1


# --- the speculative run (worker side) ---------------------------------------------------------------


class _Recorder:
    """A unit of work against an empty store: every read answers "absent" and is recorded, with the writes,
    in order. Reads of what the unit itself wrote answer from its own writes, as a real transaction does.

    Duck-typed, not a ``Transaction`` subclass: an operation it does not know (one added to the protocol
    later) raises AttributeError, and the unit is then run for real on the main process."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.observed = False
        self._current: dict[tuple[str, str], ResourceVersion] = {}
        self._versions: dict[tuple[str, str, int], ResourceVersion] = {}

    def _observe(self, op: tuple) -> None:
        self.ops.append(op)
        self.observed = True

    async def read_current(self, type_: str, id_: str) -> ResourceVersion | None:
        found = self._current.get((type_, id_))
        if found is None:
            self._observe((CURRENT, type_, id_))
        return found

    async def read_version(self, type_: str, id_: str, version: int) -> ResourceVersion | None:
        if (type_, id_) in self._current:  # created by this unit: it has no older version
            return self._versions.get((type_, id_, version))
        self._observe((VERSION, type_, id_, version))
        return None

    async def find_ids(self, query, limit: int) -> list[str]:
        self._observe((FIND, query, limit))
        return []

    async def put(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        key = (version.type, version.id)
        current = self._current.get(key)
        if version.version != (current.version if current else 0) + 1:
            raise VersionConflict(f"{version.type}/{version.id}: version {version.version} out of sequence")
        rows = [(e.param, e.value, e.system, e.low, e.high) for e in entries]
        self.ops.append((PUT, *key, version.version, version.last_updated, version.method, version.body, rows))
        self._current[key] = version
        self._versions[(*key, version.version)] = version


class _Speculation:
    """The ``store`` of the speculative Context: ``transact`` runs the work on a recorder."""

    def __init__(self) -> None:
        self.units: list[_Recorder] = []

    async def transact(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        tx = _Recorder()
        self.units.append(tx)
        return await work(tx)

    @property
    def observed(self) -> bool:
        return any(u.observed for u in self.units)

    def ops(self) -> tuple:
        return tuple(op for u in self.units for op in u.ops)


async def _speculate(kind: str, payload: Any, settings: Settings) -> tuple[str, Any]:
    speculation = _Speculation()
    ctx = Context(speculation, settings)  # type: ignore[arg-type]
    if kind == TRANSACTION:
        if any(e.method in ("GET", "HEAD") for e in payload):
            return REDO, None  # reads answered from the store: only the real run can do them
        try:
            await bundles.transaction(ctx, payload)
        except FhirError as exc:
            return (REDO, None) if speculation.observed else (ERROR, _failure(exc.status, exc.issues))
        return OPS, speculation.ops()
    result = (await bundles.batch(ctx, [payload]))[0]
    if result.status >= 400:
        return (REDO, None) if speculation.observed else (ERROR, _failure(result.status, result.outcome or []))
    return OPS, speculation.ops()


def _failure(status: int, issues: Sequence[Issue]) -> tuple[int, str]:
    return status, "; ".join(i.diagnostics for i in issues) or "failed"


async def prepare(job: Job, settings: Settings) -> list[tuple]:
    """A job's units, as (position, where, kind, count, code, result): code OPS with the recorded log, ERROR
    with (status, diagnostics), or REDO (the main process must run it for real)."""
    out: list[tuple] = []
    for position, (where, kind, payload) in enumerate(requests(job, settings)):
        if kind == FAILED:
            out.append((position, where, kind, 0, ERROR, _failure(payload.status, payload.issues)))
            continue
        try:
            code, result = await _speculate(kind, payload, settings)
        except Exception as exc:  # a bug, not the data: the main process runs it for real and reports
            code, result = REDO, f"{type(exc).__name__}: {exc}"
        out.append((position, where, kind, write_count(kind, payload), code, result))
    return out


_worker: dict[str, Any] = {}


def _init_worker(settings: dict) -> None:
    _worker["settings"] = Settings.model_construct(**settings)
    _worker["loop"] = asyncio.new_event_loop()
    _bulk_gc()


def _bulk_gc() -> None:
    """Collect garbage less often in a process that only loads: parsing a Bundle allocates millions of
    containers, and the default thresholds rescan them (and every imported model) over and over: ~15 % of
    a worker's CPU. Cycles are still collected; what is loaded at start moves out of the scans."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _prepare_in_worker(job: Job) -> tuple[list[tuple], int, float]:
    """The units of ``job``, with this worker's pid and CPU seconds so far (the main process sums them)."""
    units = _worker["loop"].run_until_complete(prepare(job, _worker["settings"]))
    return units, os.getpid(), time.process_time()


# --- replay (main process) ----------------------------------------------------------------------------


class _Stale(Exception):
    """The store does not answer a recorded read as the speculation assumed."""


class _NoFastPath(Exception):
    """The store's transaction is not the SQLite one whose connection the group replay uses."""


@lru_cache(maxsize=4096)
def _stamp_bytes(us: int) -> bytes:
    return b'"lastUpdated":"' + to_instant(us).encode() + b'"'


def _restamp(op: tuple, stamps: dict[tuple[str, str], int]) -> tuple[ResourceVersion, list[IndexEntry]]:
    """A recorded write with the time of now (strictly after a previous version written by the same unit)."""
    _, type_, id_, version, old, method, body, rows = op
    previous = stamps.get((type_, id_))
    now = now_us()
    ts = max(now, previous + 1000) if previous is not None else now
    stamps[(type_, id_)] = ts
    if ts != old:
        delta = ts - old
        if body is not None:  # meta.lastUpdated: meta is the third member, it comes first
            body = body.replace(_stamp_bytes(old), _stamp_bytes(ts), 1)
        rows = [(p, v, s, lo + delta, hi + delta) if p == "_lastUpdated" and lo == old else (p, v, s, lo, hi)
                for p, v, s, lo, hi in rows]  # fmt: skip
    return ResourceVersion(type_, id_, version, ts, method, body), [IndexEntry(*r) for r in rows]


async def _replay(tx: Transaction, ops: tuple) -> None:
    stamps: dict[tuple[str, str], int] = {}
    for op in ops:
        tag = op[0]
        if tag == PUT:
            try:
                await tx.put(*_restamp(op, stamps))
            except VersionConflict as exc:
                raise _Stale(str(exc)) from None
        elif tag == CURRENT:
            if await tx.read_current(op[1], op[2]) is not None:
                raise _Stale(f"{op[1]}/{op[2]} exists")
        elif tag == VERSION:
            if await tx.read_version(op[1], op[2], op[3]) is not None:
                raise _Stale(f"{op[1]}/{op[2]} has version {op[3]}")
        elif await tx.find_ids(op[1], op[2]):
            raise _Stale("a conditional search matches")


def _sqlite_access(tx: Transaction) -> tuple[Any, Callable[..., Awaitable]] | None:
    """The connection and writer-thread runner of a SQLite unit of work, else None."""
    from .store.sqlite import SQLiteTransaction

    if isinstance(tx, SQLiteTransaction):
        conn, run = getattr(tx, "_conn", None), getattr(tx, "_run", None)
        if conn is not None and run is not None:
            return conn, run
    return None


def _replay_sqlite_group(conn: Any, logs: list[tuple]) -> tuple[int, str | None]:
    """On the writer thread: the logs in order, up to the first stale one (not applied). Returns how many were
    applied and why the next one is stale.

    A log without conditional searches only ever asks "is this resource absent?": asked of the store before
    the unit writes anything, that is the same question, so the unit needs no SAVEPOINT of its own. With
    searches (whose answers may depend on the unit's own earlier writes), the log replays in order inside a
    SAVEPOINT, rolled back if an answer differs."""
    from .store import sqlite as s

    for applied, ops in enumerate(logs):
        if any(op[0] == FIND for op in ops):
            conn.execute("SAVEPOINT load_unit")
            try:
                _replay_sqlite_in_order(conn, ops)
            except (_Stale, VersionConflict) as exc:
                conn.execute("ROLLBACK TO load_unit")
                conn.execute("RELEASE load_unit")
                return applied, str(exc)
            except BaseException:
                conn.execute("ROLLBACK TO load_unit")
                conn.execute("RELEASE load_unit")
                raise
            conn.execute("RELEASE load_unit")
            continue
        stale = _absent_first(conn, ops)
        if stale is not None:
            return applied, stale
        stamps: dict[tuple[str, str], int] = {}
        for op in ops:
            if op[0] == PUT:
                s._put(conn, *_restamp(op, stamps))
    return len(logs), None


def _absent_first(conn: Any, ops: tuple) -> str | None:
    """Why a log of reads and creates does not hold against the store (a resource it takes as new exists)."""
    from .store import sqlite as s

    written: set[tuple[str, str]] = set()
    for op in ops:
        tag = op[0]
        if tag == PUT:
            key = (op[1], op[2])
            if key in written:
                continue
            if op[3] != 1:
                return f"{op[1]}/{op[2]}: version {op[3]} of a resource taken as new"
            written.add(key)
        elif tag == VERSION:
            if s._version(conn, op[1], op[2], op[3]) is not None:
                return f"{op[1]}/{op[2]} has version {op[3]}"
            continue
        if s._current(conn, op[1], op[2]) is not None:
            return f"{op[1]}/{op[2]} exists"
    return None


def _replay_sqlite_in_order(conn: Any, ops: tuple) -> None:
    from .store import sqlite as s

    stamps: dict[tuple[str, str], int] = {}
    for op in ops:
        tag = op[0]
        if tag == PUT:
            s._put(conn, *_restamp(op, stamps))
        elif tag == CURRENT:
            if s._current(conn, op[1], op[2]) is not None:
                raise _Stale(f"{op[1]}/{op[2]} exists")
        elif tag == VERSION:
            if s._version(conn, op[1], op[2], op[3]) is not None:
                raise _Stale(f"{op[1]}/{op[2]} has version {op[3]}")
        elif s._find_ids(conn, op[1], op[2]):
            raise _Stale("a conditional search matches")


def _set_temp_store(conn: Any, value: int | None) -> int:
    """``PRAGMA temp_store`` (the previous value): 1 = FILE puts the statement and savepoint journals of the
    load's big units of work in a temporary file instead of memory, which with foreign keys on is ~3x
    cheaper per write (the setting applies from the next transaction; it has nothing to do with durability)."""
    previous = conn.execute("PRAGMA temp_store").fetchone()[0]
    if value is not None:
        conn.execute(f"PRAGMA temp_store={int(value)}")
    return previous


# --- the load -------------------------------------------------------------------------------------------


@dataclass
class Unit:
    job: Job
    position: int
    where: str
    count: int
    ops: tuple = ()


@dataclass
class LoadReport:
    files: int = 0
    resources: int = 0
    errors: int = 0
    elapsed: float = 0.0
    redone: int = 0  # units the main process ran for real (speculation did not hold)
    cpu_main: float = 0.0  # CPU seconds of this process during the load
    cpu_workers: float = 0.0  # CPU seconds of the worker processes
    stopped: bool = False  # --fail-fast stopped the load
    messages: list[str] = field(default_factory=list)  # the first errors (all were printed)

    @property
    def rate(self) -> float:
        return self.resources / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        stopped = " (stopped: --fail-fast)" if self.stopped else ""
        return (
            f"loaded {self.files} files, {self.resources} resources, {self.errors} errors"
            f" in {self.elapsed:.1f} s ({self.rate:.0f} resources/s;"
            f" CPU {self.cpu_main:.1f} s main + {self.cpu_workers:.1f} s workers){stopped}"
        )


MAX_KEPT_MESSAGES = 100


class Progress:
    """A bar on a TTY (rate, files, ETA), else a plain line every ``interval`` seconds."""

    def __init__(self, stream: TextIO | None, total_bytes: int, total_files: Callable[[], int | None], tty: bool):
        self.stream = stream
        self.total_bytes = max(total_bytes, 1)
        self.total_files = total_files
        self.tty = tty
        self.interval = 0.25 if tty else 10.0
        self.started = time.monotonic()
        self._shown = 0.0
        self._drawn = False

    def line(self, report: LoadReport, done_bytes: int) -> str:
        elapsed = time.monotonic() - self.started
        rate = report.resources / elapsed if elapsed > 0 else 0.0
        fraction = min(done_bytes / self.total_bytes, 1.0)
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        total = self.total_files()
        files = f"{report.files}/{total if total is not None else '?'}"
        text = (
            f"{report.resources} resources, {rate:.0f}/s, files {files}, {report.errors} errors,"
            f" {fraction:.0%}, ETA {_duration(eta) if eta is not None else '?'}"
        )
        if self.tty:
            width = 24
            full = int(fraction * width)
            text = f"[{'#' * full}{'.' * (width - full)}] " + text
        return text

    def update(self, report: LoadReport, done_bytes: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.stream is None or (not force and now - self._shown < self.interval):
            return
        self._shown = now
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(report, done_bytes))
            self._drawn = True
        else:
            self.stream.write("load: " + self.line(report, done_bytes) + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.stream is None:
            return
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Loader:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        workers: int = 0,
        fail_fast: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.ctx = Context(store, settings)
        self.workers = workers
        self.fail_fast = fail_fast
        self.progress = progress
        self.report = LoadReport()
        self.done_bytes = 0
        self._group: list[Unit] = []
        self._group_count = 0
        self._redo_cache: tuple[int, list] | None = None
        self._warned = False
        self._feed_error: Exception | None = None
        from .store.sqlite import SQLiteStore

        self._sqlite = isinstance(store, SQLiteStore)

    # reporting

    def _error(self, job: Job, where: str, status: int, diagnostics: str, transaction: bool = False) -> None:
        self.report.errors += 1
        place = f"{job.label}: {where}: " if where else f"{job.label}: "
        what = "transaction not loaded (nothing of it stored): " if transaction else ""
        text = f"error: {place}{what}{_located(where, diagnostics)} ({status})"
        if len(self.report.messages) < MAX_KEPT_MESSAGES:
            self.report.messages.append(text)
        if self.progress is not None:
            self.progress.message(text)
        if self.fail_fast:
            self.report.stopped = True

    def _note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)

    # the pipeline

    async def run(self, paths: Sequence[str | os.PathLike]) -> LoadReport:
        started, cpu_started = time.monotonic(), time.process_time()
        worker_cpu: dict[int, float] = {}
        pool = self._pool() if self.workers > 0 else None
        temp_store = await self._sqlite_temp_store(1) if self._sqlite else None
        # Jobs submitted ahead of the one being written: the workers keep preparing while a group is written.
        ahead: asyncio.Queue[tuple[Job, asyncio.Future | None] | None]
        ahead = asyncio.Queue(4 * self.workers + 2 if pool else 1)
        feeder = asyncio.create_task(self._feed(paths, pool, ahead))
        try:
            while not self.report.stopped:
                item = await ahead.get()
                if item is None:
                    break
                job, future = item
                if self._group and not (future is not None and future.done()):
                    await self._flush()  # keep the writer busy while the workers prepare
                try:
                    result = await (future if future is not None else prepare(job, self.settings))
                except BrokenProcessPool as exc:  # a worker died (killed, out of memory): no way on
                    self._error(job, "", 500, f"worker process failed: {exc}")
                    self.report.stopped = True
                    break
                if pool is not None:
                    result, pid, cpu = result
                    worker_cpu[pid] = cpu
                await self._consume(job, result)
                if self.progress is not None:
                    self.progress.update(self.report, self.done_bytes)
            if not self.report.stopped:
                await self._flush()
                await feeder  # done: it queued the end
                if self._feed_error is not None:  # unreadable inputs are reported as jobs: this is a bug
                    raise self._feed_error
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            while not ahead.empty():
                item = ahead.get_nowait()
                if item is not None and item[1] is not None:
                    item[1].cancel()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if temp_store is not None and temp_store != 1:
                with contextlib.suppress(Exception):
                    await self._sqlite_temp_store(temp_store)
            self.report.elapsed = time.monotonic() - started
            self.report.cpu_main = time.process_time() - cpu_started
            self.report.cpu_workers = sum(worker_cpu.values())
            if self.progress is not None:
                self.progress.update(self.report, self.done_bytes, force=True)
                self.progress.close()
        return self.report

    async def _feed(
        self,
        paths: Sequence[str | os.PathLike],
        pool: ProcessPoolExecutor | None,
        ahead: asyncio.Queue[tuple[Job, asyncio.Future | None] | None],
    ) -> None:
        """Read the inputs (one file or archive member at a time) and hand them to the workers, in order."""
        loop = asyncio.get_running_loop()
        try:
            for job in _iter_jobs(paths):
                if self.report.stopped:
                    return  # the consumer is gone: nothing more to queue
                if pool is not None:
                    await ahead.put((job, loop.run_in_executor(pool, _prepare_in_worker, job)))
                else:
                    await ahead.put((job, None))  # prepared here, when its turn comes
        except Exception as exc:
            self._feed_error = exc
        await ahead.put(None)

    async def _sqlite_temp_store(self, value: int) -> int | None:
        """Set the writer connection's temp_store (in a unit of work of its own), returning the previous one."""

        async def work(tx: Transaction) -> int | None:
            access = _sqlite_access(tx)
            if access is None:
                return None
            conn, run = access
            return await run(_set_temp_store, conn, value)

        return await self.store.transact(work)

    def _pool(self) -> ProcessPoolExecutor:
        # forkserver: workers do not inherit this process's threads (store writer, event loop); they fork
        # from a server that has imported the loader (validators, indexing) once.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["fhir_server.loader"])
        return ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_worker, initargs=(self.settings.model_dump(),)
        )

    async def _consume(self, job: Job, units: list[tuple]) -> None:
        for position, where, kind, count, code, result in units:
            if self.report.stopped:
                return
            if code == OPS:
                self._group.append(Unit(job, position, where, count, result))
                self._group_count += count
                if self._group_count >= GROUP_RESOURCES:
                    await self._flush()
            elif code == ERROR:
                if self.fail_fast:
                    await self._flush()  # what comes before the failing unit is loaded
                status, diagnostics = result
                self._error(job, where, status, diagnostics, transaction=kind == TRANSACTION)
            else:
                if isinstance(result, str) and not self._warned:  # the speculation broke, not the data
                    self._warned = True
                    self._note(f"warning: {job.label}: {where or 'file'}: prepared on the main process ({result})")
                await self._flush()
                await self._redo(job, position, where)
        if job.last:
            self.report.files += 1
        self.done_bytes += job.weight

    async def _flush(self) -> None:
        """Replay the queued units, in order; a stale one is re-run for real, then the rest goes on."""
        group, self._group, self._group_count = self._group, [], 0
        while group and not self.report.stopped:
            applied, stale, error = await (self._apply_sqlite(group) if self._sqlite else self._apply_each(group))
            self.report.resources += sum(u.count for u in group[:applied])
            rest = group[applied:]
            if error is not None:  # SQLite: nothing of the group was committed; else: that one unit failed
                failed = rest if self._sqlite else rest[:1]
                for unit in failed:
                    self._error(unit.job, unit.where, 500, f"store error: {error}")
                group = rest[len(failed) :]
            elif stale is not None:
                await self._redo(rest[0].job, rest[0].position, rest[0].where)
                group = rest[1:]
            else:
                return

    async def _apply_sqlite(self, group: list[Unit]) -> tuple[int, str | None, Exception | None]:
        """The whole group in one store transaction, replayed in one call on the writer thread."""

        async def work(tx: Transaction) -> tuple[int, str | None]:
            access = _sqlite_access(tx)
            if access is None:
                raise _NoFastPath
            conn, run = access
            return await run(_replay_sqlite_group, conn, [u.ops for u in group])

        try:
            applied, stale = await self.store.transact(work)
        except _NoFastPath:  # not the SQLite transaction this code knows: the generic way
            self._sqlite = False
            return await self._apply_each(group)
        except Exception as exc:
            return 0, None, exc
        return applied, stale, None

    async def _apply_each(self, group: list[Unit]) -> tuple[int, str | None, Exception | None]:
        """One store transaction per unit, through the Transaction API."""
        for applied, unit in enumerate(group):

            async def work(tx: Transaction, ops: tuple = unit.ops) -> None:
                await _replay(tx, ops)

            try:
                await self.store.transact(work)
            except (_Stale, VersionConflict) as exc:
                return applied, str(exc), None
            except Exception as exc:
                return applied, None, exc
        return len(group), None, None

    async def _redo(self, job: Job, position: int, where: str) -> None:
        """Run one unit for real on this process, with ``bundles`` and the real store."""
        self.report.redone += 1
        if self._redo_cache is None or self._redo_cache[0] != job.seq:
            self._redo_cache = (job.seq, list(requests(job, self.settings)))
        _, kind, payload = self._redo_cache[1][position]
        if kind == FAILED:
            self._error(job, where, payload.status, "; ".join(i.diagnostics for i in payload.issues))
        elif kind == TRANSACTION:
            try:
                await bundles.transaction(self.ctx, payload)
            except FhirError as exc:
                self._error(job, where, exc.status, exc.message, transaction=True)
                return
            self.report.resources += write_count(kind, payload)
        else:
            result = (await bundles.batch(self.ctx, [payload]))[0]
            if result.status >= 400:
                self._error(job, where, result.status, "; ".join(i.diagnostics for i in result.outcome or []))
            else:
                self.report.resources += 1


def _located(where: str, diagnostics: str) -> str:
    """Diagnostics without a repeat of the place already named (``Bundle.entry[3]``)."""
    if where and diagnostics.startswith(where):
        rest = diagnostics[len(where) :].lstrip(":. ")
        return rest.removeprefix("resource: ") if rest else diagnostics
    if where.startswith("line ") and diagnostics.startswith("Bundle.entry["):
        rest = diagnostics.split("]", 1)[1].lstrip(":. ")
        return rest.removeprefix("resource: ")
    return diagnostics


async def load_paths(
    store: Store,
    paths: Sequence[str | os.PathLike],
    settings: Settings | None = None,
    *,
    workers: int = 0,
    fail_fast: bool = False,
    stream: TextIO | None = None,
) -> LoadReport:
    """Load ``paths`` into a started ``store``; errors (and progress) go to ``stream``. ``workers`` = 0:
    everything on this process."""
    settings = settings or Settings()
    inputs, _ = find_inputs(paths)
    counter = _ArchiveCounter(inputs)
    tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
    progress = Progress(stream, inputs.total_bytes, counter.total, tty) if stream is not None else None
    if progress is not None:
        counter.start()
    loader = Loader(store, settings, workers=workers, fail_fast=fail_fast, progress=progress)
    return await loader.run(paths)


class _ArchiveCounter:
    """Files in the archives, counted on a thread while the load runs (a tar stream has no index)."""

    def __init__(self, inputs: Inputs) -> None:
        self.plain = len(inputs.plain)
        self.archives = inputs.archives
        self.counted: int | None = 0 if not self.archives else None

    def start(self) -> None:
        if self.archives:
            threading.Thread(target=self._count, name="load-archive-count", daemon=True).start()

    def _count(self) -> None:
        total = 0
        for path in self.archives:
            try:
                total += count_archive_members(path)
            except (OSError, tarfile.TarError, EOFError):
                return
        self.counted = total

    def total(self) -> int | None:
        return None if self.counted is None else self.plain + self.counted


def run(
    settings: Settings,
    paths: Sequence[str],
    *,
    workers: int | None = None,
    fail_fast: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """The ``fhir-server load`` command: 0 when everything loaded, 1 when anything failed, 2 for bad paths."""
    from .store import open_store

    _, problems = find_inputs(paths)
    if problems:
        for problem in problems:
            print(f"fhir-server load: {problem}", file=err)
        return 2
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _bulk_gc()  # this process only loads, too

    async def main() -> LoadReport:
        store = open_store(settings.store, write_concern=settings.mongo_write_concern)
        async with store:
            return await load_paths(store, paths, settings, workers=workers, fail_fast=fail_fast, stream=err)

    report = asyncio.run(main())
    print(report.summary(), file=out, flush=True)
    return 1 if report.errors or report.stopped else 0

"""Bulk Data ``$export`` (FHIR Bulk Data Access 2.0, https://hl7.org/fhir/uv/bulkdata/export.html).

Kick-off validates the request and queues a job; a background worker (one asyncio task per server
process, started with the app) writes one NDJSON file per resource type (split every ``FILE_MAX``
resources) into ``settings.export_dir/<job-id>/``, reading the store one keyset page (``PAGE_SIZE``) at
a time: memory is bounded by a page whatever the size of the data. Every store query carries the
caller's access constraints, captured at kick-off (``Context.constraints``).

- System level: every resource of each type. Patient level: the Patient compartment of every patient;
  Group level: of the Group's active ``member.entity`` Patients. Patients are taken ``PATIENT_BATCH`` at a
  time: for each type, one ``Chain`` per compartment parameter (compartmentdefinition-patient, the table of
  ``search.compartments``) to the batch's Patients, ORed; the Patient resources by id. The same membership
  as ORing ``compartment_condition`` of each patient, 30 times faster on SQLite (0.015 s instead of 0.49 s
  a 1,000-resource page for 100 patients). A resource in the compartment of patients of two batches is
  written once (with the first), so the output has no duplicates.
- ``_since``: ``_lastUpdated`` at or after it. ``transactionTime`` is the kick-off time: resources
  changed after it are left for the next ``_since`` export (spec: SHOULD NOT be included).
- Job state is a small JSON file per job (``<job-id>.json``), so a restart keeps finished jobs; jobs
  that were queued or running when their process stopped are marked failed (at shutdown, at the next
  start, or when their heartbeat goes stale with several worker processes). Jobs and their files are
  deleted ``export_expiry_seconds`` after they finish; cancelling (DELETE) deletes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qsl

from ..config import Settings
from ..errors import FhirError, bad_request, not_found, not_supported
from ..fhirjson import dumps, loads
from ..instant import date_range, now_us, to_instant
from ..search.compartments import definitions
from ..search.indexing import index_entries
from ..store import QueryTooCostly
from ..store.query import AllOf, AnyOf, Chain, Condition, Entry, IdIn, Range, Search
from ..validation import R4_RESOURCE_TYPES
from . import search as search_interaction
from .context import Context

log = logging.getLogger("fhir_server.export")

PAGE_SIZE = 1000  # resources read (and held) at a time
PATIENT_BATCH = 500  # patients whose compartments are queried together
FILE_MAX = 100_000  # resources per NDJSON file
HEARTBEAT_SECONDS = 5.0  # how often a process records that its active jobs are alive
STALE_SECONDS = 120.0  # an active job without heartbeat for this long belonged to a dead process
SWEEP_SECONDS = 30.0  # expiry check period (shorter when the expiry is short)
RETRY_AFTER_SECONDS = 2

OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
# Kick-off parameters of the specification this server does not implement (400, or ignored when lenient).
UNSUPPORTED = ("_elements", "patient", "includeAssociatedData", "_until", "organizeOutputBy", "allowPartialManifests")
# Result parameters make no sense in a _typeFilter query.
_RESULT_PARAMETERS = (*search_interaction.SINGLE, *search_interaction.INCLUDES)
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_ACTIVE = ("queued", "running")

Level = Literal["system", "patient", "group"]


def _now() -> float:
    """Wall-clock seconds (job creation, heartbeat and expiry); tests move it forward."""
    return time.time()


def patient_compartment_types() -> tuple[str, ...]:
    """The types a Patient/Group export covers: Patient, then the Patient compartment's other types."""
    return ("Patient", *sorted(t for t in definitions()["Patient"] if t != "Patient"))


# --- kick-off ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """A validated kick-off request."""

    level: Level
    types: tuple[str, ...]
    since: int | None = None  # µs
    filters: Mapping[str, tuple[tuple[Condition, ...], ...]] = field(default_factory=dict)  # type → ORed
    group_id: str | None = None
    members: tuple[str, ...] = ()  # Group level: the member Patient ids, sorted
    url: str = ""  # the kick-off request URL (manifest ``request``)
    parameters: tuple[tuple[str, str], ...] = ()  # as given, kept in the job state for reference


async def parse_kickoff(
    ctx: Context,
    level: Level,
    params: Sequence[tuple[str, str]],
    *,
    base: str = "",
    url: str = "",
    group_id: str | None = None,
    lenient: bool = False,
) -> ExportRequest:
    """Validate the kick-off parameters (400 naming the problem); a Group must be readable (else 404)."""
    output_formats, sinces, type_lists, type_filters = [], [], [], []
    for name, value in params:
        if name == "_outputFormat":
            output_formats.append(value)
        elif name == "_since":
            sinces.append(value)
        elif name == "_type":
            type_lists.append(value)
        elif name == "_typeFilter":
            type_filters.append(value)
        elif lenient:
            continue
        elif name in UNSUPPORTED:
            raise not_supported(f"$export parameter {name} is not supported by this server")
        else:
            raise bad_request(f"Unknown $export parameter {name!r}")
    if len(output_formats) > 1 or len(sinces) > 1:
        raise bad_request("_outputFormat and _since may each be given only once")
    for value in output_formats:
        if value.replace(" ", "+").strip().lower() not in OUTPUT_FORMATS:
            raise bad_request(f"_outputFormat={value!r} is not supported: use application/fhir+ndjson")
    since = _parse_since(sinces[0]) if sinces else None
    allowed = patient_compartment_types() if level != "system" else tuple(sorted(R4_RESOURCE_TYPES))
    readable = tuple(t for t in allowed if ctx.access.may(t, "s"))  # the token's types, silently
    types = _parse_types(type_lists, allowed, level) if type_lists else readable
    for type_ in types:
        ctx.access.require(type_, "s")  # ... but a type asked for by name must be granted
    filters = await _parse_type_filters(ctx, type_filters, types, base)
    members: tuple[str, ...] = ()
    if level == "group":
        assert group_id is not None
        members = await _group_members(ctx, group_id, base)
    return ExportRequest(level, types, since, filters, group_id, members, url, tuple(params))


def _parse_since(value: str) -> int:
    value = value.strip().replace(" ", "+")  # an unescaped '+' in a query string arrives as a space
    found = date_range(value) if _INSTANT.match(value) else None
    if found is None:
        raise bad_request(f"_since={value!r} is not a FHIR instant (e.g. 2024-01-31T12:00:00Z)")
    return found[0]


def _parse_types(values: list[str], allowed: tuple[str, ...], level: Level) -> tuple[str, ...]:
    types: dict[str, None] = {}
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in R4_RESOURCE_TYPES:
                raise bad_request(f"_type: {name!r} is not an R4 resource type")
            if name not in allowed:
                raise bad_request(f"_type: {name} resources are not part of the Patient compartment ({level} export)")
            types[name] = None
    if not types:
        raise bad_request("_type names no resource type")
    return tuple(types)


async def _parse_type_filters(
    ctx: Context, values: list[str], types: tuple[str, ...], base: str
) -> dict[str, tuple[tuple[Condition, ...], ...]]:
    """``Type?criteria``, parsed by the search parser; several for one type are ORed."""
    filters: dict[str, list[tuple[Condition, ...]]] = {}
    for value in values:
        type_, sep, query = value.partition("?")
        type_ = type_.strip()
        if not sep or type_ not in R4_RESOURCE_TYPES:
            raise bad_request(f"_typeFilter={value!r}: expected [resource type]?[search parameters]")
        if type_ not in types:
            raise bad_request(f"_typeFilter={value!r}: {type_} is not among the exported types")
        pairs = parse_qsl(query, keep_blank_values=True)
        for name, _ in pairs:
            if name in _RESULT_PARAMETERS:
                raise bad_request(f"_typeFilter={value!r}: {name} is not a search criterion")
        parsed = await search_interaction.parse_request(ctx, type_, pairs, base=base)
        filters.setdefault(type_, []).append(parsed.search.where)
    return {t: tuple(alternatives) for t, alternatives in filters.items()}


async def _group_members(ctx: Context, group_id: str, base: str) -> tuple[str, ...]:
    """The ids of the Patients the Group's active members are (references ``Patient/id``)."""
    query = Search("Group", (IdIn((group_id,)), *ctx.constraints("Group")))
    found = await ctx.store.search_page(query, 1)
    if not found or found[0].version.body is None:
        raise not_found(f"Group/{group_id} is not known")
    group = loads(found[0].version.body, max_depth=10_000)
    absolute = f"{base.rstrip('/')}/Patient/" if base else None
    ids: set[str] = set()
    for member in group.get("member") or ():
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference")
        if not isinstance(reference, str):
            continue
        if absolute and reference.startswith(absolute):
            reference = "Patient/" + reference[len(absolute) :]
        if reference.startswith("Patient/"):
            id_ = reference[len("Patient/") :].split("/_history/", 1)[0]
            if id_ and "/" not in id_:
                ids.add(id_)
    return tuple(sorted(ids))


# --- jobs ----------------------------------------------------------------------------------------


class _Cancelled(Exception):
    """The job was deleted while running."""


@dataclass
class Job:
    """One export job: the persisted ``state`` plus, while it runs in this process, its request and context."""

    state: dict[str, Any]
    ctx: Context | None = None
    request: ExportRequest | None = None
    cancelled: bool = False

    @property
    def id(self) -> str:
        return self.state["id"]


def manifest(state: Mapping[str, Any], base: str) -> dict[str, Any]:
    """The complete-status body (export.html#response---complete-status)."""
    return {
        "transactionTime": to_instant(state["transactionTime"]),
        "request": state["request"],
        # Not yet: the unguessable job id in the URL guards the files until SMART authorization arrives.
        "requiresAccessToken": bool(state.get("requires_token")),
        "output": [
            {"type": o["type"], "url": f"{base}/$export-file/{state['id']}/{o['file']}", "count": o["count"]}
            for o in state["output"]
        ],
        "error": [],
    }


class ExportManager:
    """Jobs of one export directory: kick-off, status, cancel, files; the worker and housekeeping tasks."""

    def __init__(self, settings: Settings) -> None:
        self.directory = Path(settings.export_dir)
        self.expiry = float(settings.export_expiry_seconds)
        self.single_process = settings.workers == 1
        self.jobs: dict[str, Job] = {}  # the jobs this process owns (queued or running)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle --

    async def start(self) -> None:
        self._sweep(startup=True)  # the directory is made by the first job
        self._tasks = [
            asyncio.create_task(self._worker(), name="export-worker"),
            asyncio.create_task(self._housekeeper(), name="export-housekeeper"),
        ]

    async def stop(self) -> None:
        active = list(self.jobs.values())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for job in active:  # interrupted: they cannot resume without their caller's context
            if job.state["status"] in _ACTIVE and not job.cancelled:
                self._fail(job, "The export was interrupted by a server shutdown; start it again")
        self.jobs.clear()

    # -- requests --

    def submit(self, ctx: Context, request: ExportRequest) -> Job:
        now = _now()
        state = {
            "id": secrets.token_urlsafe(32),
            "status": "queued",
            "level": request.level,
            "group": request.group_id,
            "parameters": [list(p) for p in request.parameters],
            "request": request.url,
            "transactionTime": now_us(),
            "created": now,
            "heartbeat": now,
            "finished": None,
            "expires": None,
            "progress": "queued",
            "output": [],
            "error": None,
            # Only the caller who started the job may poll, download or cancel it.
            "owner": ctx.access.owner(),
            "requires_token": ctx.access.restricted,
        }
        job = Job(state, ctx, request)
        self._persist(job.state)
        self.jobs[job.id] = job
        self._queue.put_nowait(job.id)
        return job

    def status(self, job_id: str, owner: str = "") -> dict[str, Any] | None:
        """The job's state, None if unknown, expired (an expired job is deleted on the way) or started
        by another caller than ``owner``."""
        state = self._status(job_id)
        return state if state is not None and state.get("owner", "") == owner else None

    def _status(self, job_id: str) -> dict[str, Any] | None:
        if not _JOB_ID.match(job_id):
            return None
        job = self.jobs.get(job_id)
        if job is not None:
            return job.state
        state = self._load(job_id)
        if state is None:
            return None
        if state["status"] in _ACTIVE and _now() - state["heartbeat"] > STALE_SECONDS:
            self._fail(Job(state), "The export was interrupted (its server process stopped); start it again")
        if state["expires"] is not None and state["expires"] <= _now():
            self._delete(job_id)
            return None
        return state

    def cancel(self, job_id: str, owner: str = "") -> bool:
        """DELETE: stop the job if it runs, delete its state and files. False if unknown."""
        if self.status(job_id, owner) is None:
            return False
        job = self.jobs.pop(job_id, None)
        if job is not None:
            job.cancelled = True  # the worker stops at its next page and removes what it wrote
        self._delete(job_id)  # removing the state file also stops a job running in another process
        return True

    def file(self, job_id: str, name: str, owner: str = "") -> Path | None:
        """The path of one output file of a complete job, None if there is no such file."""
        state = self.status(job_id, owner)
        if state is None or state["status"] != "completed" or not any(o["file"] == name for o in state["output"]):
            return None
        path = self.directory / job_id / name
        return path if path.is_file() else None

    # -- the worker --

    async def _worker(self) -> None:
        while True:
            job_id = await self._queue.get()
            job = self.jobs.get(job_id)
            if job is None or job.cancelled:
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one job stop the worker
                log.exception("export job %s: unexpected failure", job_id)
            finally:
                self.jobs.pop(job_id, None)

    async def _run(self, job: Job) -> None:
        assert job.ctx is not None and job.request is not None
        job.state["status"] = "running"
        job.state["progress"] = "started"
        self._persist(job.state)
        files = _Files(self.directory / job.id)
        try:
            if job.request.level == "system":
                await self._export_system(job, files)
            else:
                await self._export_compartments(job, files)
            await files.close()
            self._check(job)
        except (asyncio.CancelledError, _Cancelled) as exc:
            await files.close()
            if isinstance(exc, asyncio.CancelledError):  # server shutdown: stop() marks the job failed
                shutil.rmtree(files.directory, ignore_errors=True)
                raise
            await asyncio.to_thread(shutil.rmtree, files.directory, True)
            return
        except Exception as exc:
            await files.close()
            await asyncio.to_thread(shutil.rmtree, files.directory, True)
            if isinstance(exc, FhirError | QueryTooCostly):
                message = f"The export failed: {exc}"
            else:
                log.exception("export job %s failed", job.id)
                message = "The export failed: internal error (see the server log)"
            if not job.cancelled:
                self._fail(job, message)
            return
        if job.cancelled:
            await asyncio.to_thread(shutil.rmtree, files.directory, True)
            return
        finished = _now()
        total = sum(o["count"] for o in files.outputs)
        job.state.update(
            status="completed",
            finished=finished,
            expires=finished + self.expiry,
            progress=f"complete: {total} resources",
            output=files.outputs,
        )
        self._persist(job.state)

    def _check(self, job: Job) -> None:
        if job.cancelled or not self._state_path(job.id).exists():
            job.cancelled = True
            raise _Cancelled

    async def _pages(self, job: Job, search: Search) -> AsyncIterator[list]:
        """The live matches of ``search``, ``PAGE_SIZE`` at a time (keyset, id order)."""
        assert job.ctx is not None
        after = None
        while True:
            page = await job.ctx.store.search_page(search, PAGE_SIZE, after=after)
            self._check(job)
            if page:
                yield page
            if len(page) < PAGE_SIZE:
                return
            after = page[-1].key
            await asyncio.sleep(0)  # let requests in between pages

    def _where(self, job: Job, type_: str) -> tuple[Condition, ...]:
        """What every query of ``type_`` carries: _since, _typeFilter, the caller's constraints."""
        assert job.ctx is not None and job.request is not None
        where: list[Condition] = []
        if job.request.since is not None:
            where.append(Entry("_lastUpdated", ranges=(Range("low", ">=", job.request.since),)))
        alternatives = job.request.filters.get(type_)
        if alternatives:
            where += alternatives[0] if len(alternatives) == 1 else [AnyOf(tuple(AllOf(a) for a in alternatives))]
        return (*where, *job.ctx.constraints(type_))

    async def _export_system(self, job: Job, files: _Files) -> None:
        assert job.request is not None
        types = job.request.types
        for done, type_ in enumerate(types):
            async for page in self._pages(job, Search(type_, self._where(job, type_))):
                await files.write(type_, self._bodies(job, page))
                job.state["progress"] = f"{type_} ({done + 1}/{len(types)} types): {files.total} resources written"
            await files.close(type_)

    async def _export_compartments(self, job: Job, files: _Files) -> None:
        assert job.request is not None
        done: set[str] = set()  # Group level: members already covered (bounded by the Group's size)
        patients = 0
        async for batch in self._patient_batches(job):
            for type_ in job.request.types:
                membership = _compartments(job, type_, batch)
                search = Search(type_, (membership, *self._where(job, type_)))
                async for page in self._pages(job, search):
                    bodies = self._bodies(job, page)
                    if patients and type_ != "Patient":
                        bodies = await self._first_time(job, type_, bodies, batch[0], done)
                    await files.write(type_, bodies)
            patients += len(batch)
            if job.request.level == "group":
                done.update(batch)
            job.state["progress"] = f"{patients} patients: {files.total} resources written"

    async def _patient_batches(self, job: Job) -> AsyncIterator[list[str]]:
        """The selected patients (live, visible to the caller), ``PATIENT_BATCH`` at a time, in id order."""
        assert job.ctx is not None and job.request is not None
        store, constraints = job.ctx.store, job.ctx.constraints("Patient")
        if job.request.level == "patient":
            after = None
            while True:
                page = await store.search_page(Search("Patient", constraints), PATIENT_BATCH, after=after)
                self._check(job)
                if page:
                    yield [m.version.id for m in page]
                if len(page) < PATIENT_BATCH:
                    return
                after = page[-1].key
        else:
            members = job.request.members
            for start in range(0, len(members), PATIENT_BATCH):
                chunk = members[start : start + PATIENT_BATCH]
                found = await store.find_ids(Search("Patient", (IdIn(chunk), *constraints)), len(chunk))
                self._check(job)
                if found:
                    yield sorted(found)

    async def _first_time(self, job: Job, type_: str, bodies: list[bytes], first: str, done: set[str]) -> list[bytes]:
        """Drop the resources also in the compartment of a patient of an earlier batch (already written)."""
        assert job.ctx is not None and job.request is not None
        params = set(_compartment_params(type_))
        earlier_refs: list[set[str]] = []
        for body in bodies:
            refs: set[str] = set()
            if body.count(b'"Patient/') > 1:  # one patient reference: it is the current batch's
                for entry in index_entries(loads(body, max_depth=10_000)):
                    if entry.param in params and entry.value and entry.value.startswith("Patient/"):
                        id_ = entry.value[len("Patient/") :]
                        if (id_ in done) if job.request.level == "group" else id_ < first:
                            refs.add(id_)
            earlier_refs.append(refs)
        candidates = set().union(*earlier_refs)
        if not candidates:
            return bodies
        if job.request.level == "group":
            selected = candidates
        else:  # an earlier patient counts if it was selected: live and visible
            query = Search("Patient", (IdIn(tuple(sorted(candidates))), *job.ctx.constraints("Patient")))
            selected = set(await job.ctx.store.find_ids(query, len(candidates)))
        return [body for body, refs in zip(bodies, earlier_refs, strict=True) if not refs & selected]

    @staticmethod
    def _bodies(job: Job, page: list) -> list[bytes]:
        """The page's bodies, one line each; resources changed after transactionTime are left out."""
        limit = job.state["transactionTime"]
        out = []
        for match in page:
            version = match.version
            if version.body is None or version.last_updated > limit:
                continue
            body = version.body
            out.append(body if b"\n" not in body else dumps(loads(body, max_depth=10_000)))
        return out

    # -- housekeeping --

    async def _housekeeper(self) -> None:
        last_sweep = _now()
        while True:
            await asyncio.sleep(min(HEARTBEAT_SECONDS, max(self.expiry / 2, 0.05)))
            for job in list(self.jobs.values()):
                if job.cancelled or not self._state_path(job.id).exists():
                    job.cancelled = True
                    continue
                job.state["heartbeat"] = _now()
                self._persist(job.state)
            if _now() - last_sweep >= min(SWEEP_SECONDS, self.expiry / 2):
                last_sweep = _now()
                try:
                    await asyncio.to_thread(self._sweep)
                except Exception:
                    log.exception("export housekeeping failed")

    def _sweep(self, startup: bool = False) -> None:
        """Delete expired jobs and stray directories; fail active jobs whose process is gone."""
        if not self.directory.is_dir():
            return
        now = _now()
        known = set()
        for path in self.directory.glob("*.json"):
            job_id = path.stem
            known.add(job_id)
            state = self._load(job_id)
            if state is None or job_id in self.jobs:
                continue
            if state["status"] in _ACTIVE and (
                (startup and self.single_process) or now - state["heartbeat"] > STALE_SECONDS
            ):
                self._fail(Job(state), "The export was interrupted by a server restart; start it again")
            if state["expires"] is not None and state["expires"] <= now:
                self._delete(job_id)
        for path in self.directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.is_dir() and path.name not in known and now - path.stat().st_mtime > self.expiry:
                    shutil.rmtree(path, ignore_errors=True)  # left by a job whose state is gone (crash, cancel)
                elif path.suffix == ".tmp" and now - path.stat().st_mtime > STALE_SECONDS:
                    path.unlink()  # a state write interrupted by a crash

    # -- state files --

    def _state_path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.json"

    def _persist(self, state: dict[str, Any]) -> None:
        path = self._state_path(state["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def _load(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_path(job_id).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _fail(self, job: Job, message: str) -> None:
        finished = _now()
        job.state.update(status="failed", error=message, finished=finished, expires=finished + self.expiry)
        job.state["progress"] = "failed"
        self._persist(job.state)

    def _delete(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._state_path(job_id).unlink()
        shutil.rmtree(self.directory / job_id, ignore_errors=True)


def _compartment_params(type_: str) -> list[str]:
    return [p for p in definitions()["Patient"].get(type_, ()) if p != "{def}"]


def _compartments(job: Job, type_: str, batch: list[str]) -> Condition:
    """``type_`` resources in the Patient compartment of one of ``batch`` (the Patients: by id)."""
    assert job.ctx is not None
    if type_ == "Patient":
        return IdIn(tuple(batch))
    patients = Search("Patient", (IdIn(tuple(batch)), *job.ctx.constraints("Patient")))
    links = [Chain(param, patients) for param in _compartment_params(type_)]
    return links[0] if len(links) == 1 else AnyOf(tuple(links))


@dataclass
class _File:
    handle: IO[bytes]
    entry: dict[str, Any]  # the manifest output entry: type, file, count


class _Files:
    """The job's NDJSON files: one open file per type, a new one every FILE_MAX resources."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.outputs: list[dict[str, Any]] = []
        self.total = 0
        self._open: dict[str, _File] = {}
        self._numbers: dict[str, int] = {}

    async def write(self, type_: str, bodies: list[bytes]) -> None:
        while bodies:
            current = self._open.get(type_)
            if current is None or current.entry["count"] >= FILE_MAX:
                if current is not None:
                    await self.close(type_)
                number = self._numbers[type_] = self._numbers.get(type_, 0) + 1
                name = f"{type_}-{number}.ndjson"
                await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
                handle = await asyncio.to_thread(open, self.directory / name, "wb")
                current = self._open[type_] = _File(handle, {"type": type_, "file": name, "count": 0})
                self.outputs.append(current.entry)
            room = FILE_MAX - current.entry["count"]
            chunk, bodies = bodies[:room], bodies[room:]
            await asyncio.to_thread(current.handle.write, b"\n".join(chunk) + b"\n")
            current.entry["count"] += len(chunk)
            self.total += len(chunk)

    async def close(self, type_: str | None = None) -> None:
        for name in [type_] if type_ is not None else list(self._open):
            current = self._open.pop(name, None)
            if current is not None:
                await asyncio.to_thread(current.handle.close)

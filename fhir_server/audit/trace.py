"""Writing the trail: every access of an authenticated caller leaves its AuditEvents, committed before the
answer (reads) or in the unit of work of the write (writes).

``AuditTrail`` (one per app) writes events and tells its listeners (the patient's notifications) inside the
same unit of work. ``RequestTrace`` (one per request) knows who acts; as a ``WriteObserver`` it traces each
version the request writes in its own unit of work, so a write and its trace commit or roll back together;
the ASGI side (``audit/middleware.py``) traces what the answer discloses.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import orjson

from ..fhirjson import dumps
from ..instant import new_id, now_us
from ..interactions.crud import stamp
from ..search.indexing import index_entries
from ..search.patients import patients_in, patients_of
from ..store import IndexEntry, ResourceVersion, Store, Transaction
from .events import Access, Actor, build_audit_event

#: A listener sees the events of a unit of work (stored, with their ids), inside it.
Listener = Callable[[Transaction, list[dict]], Awaitable[None]]
WRITE_INTERACTIONS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class AuditTrail:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.listeners: list[Listener] = []
        self._pending: deque[tuple[Sequence[dict], asyncio.Future]] = deque()
        self._flusher: asyncio.Task | None = None

    async def put(self, tx: Transaction, events: Sequence[dict], *, bulk: bool = False) -> list[dict]:
        """Write ``events`` in ``tx`` and show them to the listeners (same unit of work). ``bulk``: in one
        append (many events at once: the store may write them off the event loop)."""
        prepared = [_prepare(event) for event in events]
        if bulk:
            await tx.append([(version, entries) for version, entries, _ in prepared])
        else:
            for version, entries, _ in prepared:
                await tx.put(version, entries)
        stored = [body for _, _, body in prepared]
        for listener in self.listeners:
            await listener(tx, stored)
        return stored

    async def commit(self, events: Sequence[dict]) -> None:
        """Write ``events`` and return once they are committed. The events of requests that arrive while a
        batch is being written go together in the next one: one unit of work, one append, one COMMIT."""
        if not events:
            return
        future = asyncio.get_running_loop().create_future()
        self._pending.append((events, future))
        if self._flusher is None or self._flusher.done():
            # Its own task: a request that goes away cannot abandon a batch others wait for.
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(len(self._pending))]
            events = [event for group, _ in batch for event in group]
            try:
                await self.store.transact(lambda tx, events=events: self.put(tx, events, bulk=True))
            except Exception as exc:  # nothing committed: every request of the batch learns it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)


def _prepare(event: dict) -> tuple[ResourceVersion, list[IndexEntry], dict]:
    """A new AuditEvent as stored: its id, version 1, lastUpdated; its bytes and index entries."""
    last_updated = now_us()
    body = stamp(event, new_id(), 1, last_updated)
    version = ResourceVersion("AuditEvent", body["id"], 1, last_updated, "POST", dumps(body))
    return version, audit_entries(body), body


#: The elements that change from one event of a caller to the next; the rest (type, subtype, action, outcome,
#: purpose, agents, source) repeats request after request.
_VARYING = frozenset({"resourceType", "id", "meta", "period", "recorded", "entity", "outcomeDesc"})


def audit_entries(body: dict) -> list[IndexEntry]:
    """``index_entries(body)``, computed in parts: the entries of the repeating elements come from a cache
    (keyed by their JSON), those of the varying ones are extracted. Exact because every AuditEvent search
    parameter reads paths under one top-level element (a union of such paths at most), so the entries of
    the whole are the union of the entries of the parts (tests/test_audit_trail.py checks it). Likewise each
    ``entity`` element is read on its own: a search page's event names each resource returned, whose
    ``what`` alone varies (its ``type`` and ``role`` repeat: extracted once per distinct element, not 200
    times)."""
    varying = {k: v for k, v in body.items() if k in _VARYING and k != "entity"}
    repeating = dumps({k: v for k, v in body.items() if k not in _VARYING})
    entities = body.get("entity") or ()
    whats = [{"what": e["what"]} for e in entities if "what" in e]
    others = dict.fromkeys(dumps({k: v for k, v in e.items() if k != "what"}) for e in entities)
    return list(dict.fromkeys([
        *_repeating_entries(repeating),
        *index_entries({**varying, "entity": whats} if whats else varying),
        *(entry for other in others for entry in _entity_entries(other)),
    ]))  # fmt: skip


@lru_cache(maxsize=4096)
def _repeating_entries(repeating: bytes) -> tuple[IndexEntry, ...]:
    return tuple(index_entries({"resourceType": "AuditEvent", **orjson.loads(repeating)}))


@lru_cache(maxsize=1024)
def _entity_entries(entity: bytes) -> tuple[IndexEntry, ...]:
    return tuple(index_entries({"resourceType": "AuditEvent", "entity": [orjson.loads(entity)]}))


@dataclass(slots=True)
class RequestTrace:
    """Who acts in one request, and what its writes have traced so far."""

    trail: AuditTrail
    actor: Actor
    base: str
    interaction: str
    started: int = field(default_factory=now_us)
    address: str | None = None
    request_id: str | None = None
    wrote: set[tuple[str, str]] = field(default_factory=set)  # (type, id) written by this request

    def access(self, interaction: str | None = None, **fields) -> Access:
        return Access(
            self.actor, interaction or self.interaction, self.base, started=self.started, address=self.address,
            request_id=self.request_id, **fields,
        )  # fmt: skip

    # --- writes: the WriteObserver side
    async def written(self, tx: Transaction, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        self.wrote.add((version.type, version.id))
        if version.type == "AuditEvent":
            return  # an AuditEvent recorded by a client is itself the record
        if version.deleted:
            previous = await tx.read_version(version.type, version.id, version.version - 1)
            body = orjson.loads(previous.body) if previous is not None and previous.body else {}
            patients = patients_of(body, self.base) if body else []
        else:
            patients = patients_in(version.type, version.id, entries)
        reference = f"{version.type}/{version.id}/_history/{version.version}"
        event = build_audit_event(
            self.access(WRITE_INTERACTIONS.get(version.method, "update"), patients=patients, resources=[reference])
        )
        await self.trail.put(tx, [event])

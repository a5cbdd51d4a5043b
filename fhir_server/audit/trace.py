"""Writing the trail: every access of an authenticated caller leaves its AuditEvents, committed before the
answer (reads) or in the unit of work of the write (writes).

``AuditTrail`` (one per app) writes events and tells its listeners (the patient's notifications) inside the
same unit of work. ``RequestTrace`` (one per request) knows who acts; as a ``WriteObserver`` it traces each
version the request writes in its own unit of work, so a write and its trace commit or roll back together;
the ASGI side (``audit/middleware.py``) traces what the answer discloses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import orjson

from ..instant import now_us
from ..interactions.crud import create_in
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

    async def put(self, tx: Transaction, events: Sequence[dict]) -> list[dict]:
        """Write ``events`` in ``tx`` and show them to the listeners (same unit of work)."""
        stored = []
        for event in events:
            result = await create_in(tx, "AuditEvent", event)
            stored.append(orjson.loads(result.version.body or b"{}"))
        for listener in self.listeners:
            await listener(tx, stored)
        return stored

    async def commit(self, events: Sequence[dict]) -> None:
        """Write ``events`` in a unit of work of their own; returns once committed (the store's group commit
        shares one COMMIT between the requests that arrive together)."""
        if events:
            await self.store.transact(lambda tx: self.put(tx, events))


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

"""Write observers: what must happen in the same unit of work as every write (its AuditEvent, the patient's
notifications, Subscription matching), without the interactions knowing who listens.

``ObservedTransaction`` wraps the store's transaction, under the access guard: each version the guard lets
through is written, then shown to every observer with the store's own transaction, so what an observer
writes (an AuditEvent, a Communication, an outbox item) commits or rolls back with the write, and is
neither checked against the caller's scopes nor observed in turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..search.indexing import IndexEntry
from ..store import ResourceVersion, Transaction
from ..store.base import StoreQuery
from ..store.query import Search


class WriteObserver(Protocol):
    async def written(self, tx: Transaction, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        """``version`` (a deletion: body None) was just put in ``tx`` with its index ``entries``."""


class ObservedTransaction(Transaction):
    def __init__(self, inner: Transaction, observers: Sequence[WriteObserver]) -> None:
        self.inner = inner
        self.observers = observers

    async def read_current(self, type_: str, id_: str) -> ResourceVersion | None:
        return await self.inner.read_current(type_, id_)

    async def read_version(self, type_: str, id_: str, version: int) -> ResourceVersion | None:
        return await self.inner.read_version(type_, id_, version)

    async def find_ids(self, query: StoreQuery | Search, limit: int) -> list[str]:
        return await self.inner.find_ids(query, limit)

    async def put(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> ResourceVersion | None:
        written = await self.inner.put(version, entries)
        for observer in self.observers:
            await observer.written(self.inner, written or version, entries)
        return written

    async def rewrite_body(self, version: ResourceVersion) -> None:
        await self.inner.rewrite_body(version)  # $meta-add/-delete: no new version, nothing to observe

    async def replace_entries(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        await self.inner.replace_entries(version, entries)

    async def enqueue(self, item) -> None:
        await self.inner.enqueue(item)

"""The Store protocol: what both backends (SQLite, MongoDB) provide, and nothing FHIR-search specific.

A store keeps every version of every resource as the exact JSON bytes the server produced, plus
the search index entries of each *current* version. All writes happen inside ``transact``: the new
version, the current pointer, the superseded mark of the previous version and the index entries
change together or not at all.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import orjson

from ..notify.outbox import OutboxItem
from .query import AnyOf, Condition, Entry, IdIn, Search, SortKey

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ResourceVersion:
    """One stored version. ``body`` is None for a deletion."""

    type: str
    id: str
    version: int
    last_updated: int  # microseconds since the Unix epoch, UTC
    method: str  # POST | PUT | PATCH | DELETE: the interaction that made it (history request.method)
    body: bytes | None

    @property
    def deleted(self) -> bool:
        return self.body is None


class IndexEntry(NamedTuple):
    """One normalized search value of a current resource version.

    ``value`` holds a normalized string, code, URI or reference target; ``system`` a token/quantity
    system or a reference's target type; ``low``/``high`` the range of a date, number or quantity.
    A tuple: dozens are built per write (3x cheaper than a frozen dataclass) and cross process boundaries.
    """

    param: str
    value: str | None = None
    system: str | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True, slots=True)
class TokenMatch:
    """``param=[system|]code``. ``system`` None: any system; "" : no system."""

    param: str
    code: str
    system: str | None = None


@dataclass(frozen=True, slots=True)
class StoreQuery:
    """Shorthand for a common Search: ids and a conjunction of token disjunctions (live resources only)."""

    type: str
    ids: tuple[str, ...] | None = None
    all_of: tuple[tuple[TokenMatch, ...], ...] = ()

    def to_search(self) -> Search:
        where: list[Condition] = [] if self.ids is None else [IdIn(tuple(self.ids))]
        for any_of in self.all_of:
            where.append(AnyOf(tuple(_token_entry(m) for m in any_of)))
        return Search(self.type, tuple(where))


def _token_entry(match: TokenMatch) -> Entry:
    return Entry(match.param, value=match.code, system=match.system or None, no_system=match.system == "")


def as_search(query: StoreQuery | Search) -> Search:
    return query.to_search() if isinstance(query, StoreQuery) else query


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """History of the system, a type, or one resource, newest first.

    ``since``: versions last updated at/after it. ``at_low``/``at_high``: versions that were current at
    some point in [at_low, at_high). ``before``: paging cursor, the (last_updated, type, id, version)
    key of the last entry of the previous page.
    """

    type: str | None = None
    id: str | None = None
    since: int | None = None
    at_low: int | None = None
    at_high: int | None = None
    before: tuple[int, str, str, int] | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class Match:
    """A search hit and its sort key (what a next-page cursor resumes after)."""

    version: ResourceVersion
    key: tuple


class Transaction(ABC):
    """The view of the store inside one atomic unit of work."""

    @abstractmethod
    async def read_current(self, type_: str, id_: str) -> ResourceVersion | None: ...

    @abstractmethod
    async def read_version(self, type_: str, id_: str, version: int) -> ResourceVersion | None: ...

    @abstractmethod
    async def find_ids(self, query: StoreQuery | Search, limit: int) -> list[str]: ...

    @abstractmethod
    async def put(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> ResourceVersion | None:
        """Store ``version`` as the new current version.

        It must be exactly one more than the current version (1 for a new resource), else
        ``VersionConflict``. A deletion (body None) removes the resource's index entries. Stores return None;
        a wrapping transaction that wrote something else (the access guard applying a patient's deposit
        settings) returns what it wrote.
        """

    @abstractmethod
    async def rewrite_body(self, version: ResourceVersion) -> None:
        """Replace the stored bytes of an existing, non-deleted version in place (``$meta-add`` and
        ``$meta-delete`` change meta without making a new version, per the R4 operation definitions)."""

    @abstractmethod
    async def replace_entries(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        """Rebuild the index entries of the current ``version`` (reindex): no new version is made.

        ``VersionConflict`` if ``version`` is no longer the current, live version.
        """

    async def purge(self, type_: str, ids: Sequence[str]) -> int:
        """Remove every trace of these resources: all their versions, their current pointer and their index
        entries, as if they had never been written (the audit retention purge, ``fhir-server audit purge``;
        no interaction reaches it). Returns how many of ``ids`` existed. Not available through a wrapping
        transaction (the access guard): only the store's own."""
        raise NotImplementedError(f"{type(self).__name__} cannot purge")

    async def append(self, versions: Sequence[tuple[ResourceVersion, Sequence[IndexEntry]]]) -> None:
        """Store new resources (version 1 of ids never used: nothing current to check or supersede) in this
        unit of work: an append-only record such as the audit trail. Stores may write them in bulk."""
        for version, entries in versions:
            await self.put(version, entries)

    async def enqueue(self, item: OutboxItem) -> None:
        """Add ``item`` to the outbox in this unit of work: it exists if and only if the unit commits
        (``notify/outbox.py``). A wrapping transaction passes it to the store's own."""
        raise NotImplementedError(f"{type(self).__name__} has no outbox")


_BYTES_TAG = "$bytes"


def _bytes_as_json(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} cannot be stored in an outbox payload")


def encode_payload(payload: dict[str, Any]) -> bytes:
    """An outbox item's payload as stored (JSON; bytes values, such as a rest-hook body, tagged as base64)."""
    return orjson.dumps(payload, default=_bytes_as_json)


def decode_payload(data: bytes) -> dict[str, Any]:
    """The payload ``encode_payload`` stored, bytes values restored."""
    payload = orjson.loads(data)
    return _untag(payload) if _BYTES_TAG.encode() in data else payload


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(_BYTES_TAG), str):
            return base64.b64decode(value[_BYTES_TAG])
        return {k: _untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag(v) for v in value]
    return value


class VersionConflict(Exception):
    """Another writer changed the resource between read and write."""


class QueryTooCostly(Exception):
    """A search the store refuses to run unbounded (e.g. a chain level with too many matches)."""


class StoreUnavailable(Exception):
    """The database cannot be reached or refused the operation."""


class Store(ABC):
    """Async persistence for resource versions and their index entries."""

    @abstractmethod
    async def start(self) -> None:
        """Open connections, create schema and indexes (idempotent)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def read_current(self, type_: str, id_: str) -> ResourceVersion | None:
        """The current version (possibly a deletion), or None if the resource never existed."""

    @abstractmethod
    async def read_version(self, type_: str, id_: str, version: int) -> ResourceVersion | None: ...

    @abstractmethod
    async def history(self, query: HistoryQuery) -> list[ResourceVersion]: ...

    @abstractmethod
    async def count_history(self, query: HistoryQuery) -> int: ...

    @abstractmethod
    async def find_ids(self, query: StoreQuery | Search, limit: int) -> list[str]: ...

    @abstractmethod
    async def search_page(
        self,
        query: StoreQuery | Search,
        limit: int,
        *,
        sort: tuple[SortKey, ...] = (),
        after: tuple | None = None,
        reverse: bool = False,
    ) -> list[Match]:
        """Current versions of the live matches in ``sort`` order (then id), strictly after key ``after``.

        ``reverse`` walks the same order backwards (for ``previous`` links): strictly before ``after``.
        """

    async def search(self, query: StoreQuery | Search, limit: int, after: str | None = None) -> list[ResourceVersion]:
        """Current versions of the live matches, in id order, ids strictly after ``after``."""
        page = await self.search_page(query, limit, after=(after,) if after is not None else None)
        return [m.version for m in page]

    @abstractmethod
    async def include(
        self, source_type: str, source_ids: Sequence[str], param: str, targets: Mapping[str, tuple[Condition, ...]]
    ) -> list[ResourceVersion]:
        """``_include``: live resources that ``param`` of the given resources points at, limited to the target
        types given, each under its own constraints (one query)."""

    @abstractmethod
    async def revinclude(self, refs: Sequence[str], source: Search, param: str) -> list[ResourceVersion]:
        """``_revinclude``: live matches of ``source`` whose ``param`` points at one of ``refs`` ("T/id")."""

    @abstractmethod
    async def count(self, query: StoreQuery | Search) -> int:
        """Number of live matches, without loading any body."""

    async def bounded_count(self, query: StoreQuery | Search, cap: int) -> int | None:
        """The number of live matches when the store finds it with a bounded effort and it is at most
        ``cap``; None otherwise (more matches, or too costly to count here)."""
        found = await self.count(query)
        return found if found <= cap else None

    async def estimate(self, query: StoreQuery | Search, sample: tuple[int, str] | None = None) -> int | None:
        """An estimate of the number of matches without counting them, None when the store cannot tell.
        ``sample``: (matches, last id) of a first page read in id order, which the store may scale up
        (docs/search.md "Totals")."""
        return None

    @abstractmethod
    async def transact(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``work`` atomically; retried on transient write conflicts; all or nothing."""

    async def purge(self, type_: str, ids: Sequence[str]) -> int:
        """``Transaction.purge`` in a unit of work of its own (all of ``ids`` or nothing)."""
        return await self.transact(lambda tx: tx.purge(type_, ids))

    # -- the transactional outbox (notify/outbox.py): items are written by ``Transaction.enqueue`` ------------

    async def outbox_claim(
        self, now: int, lease_until: int, limit: int, *, channels: Sequence[str] | None = None
    ) -> list[OutboxItem]:
        """Atomically lease up to ``limit`` pending items due at ``now`` (``due <= now``), oldest due first:
        their ``due`` becomes ``lease_until``, so no other worker (another process) takes them before then.
        Returns them as leased (``due`` = ``lease_until``, the attempts made so far). ``channels``: only
        items of these channels (the others stay untouched)."""
        raise NotImplementedError(f"{type(self).__name__} has no outbox")

    async def outbox_settle(
        self,
        item_id: str,
        *,
        delivered: bool,
        attempts: int,
        due: int | None = None,
        error: str | None = None,
        give_up: bool = False,
    ) -> None:
        """Record an attempt: delivered → the item is deleted; else its ``attempts`` and ``last_error`` are
        updated and it is due again at ``due`` (unchanged if None), or kept as ``failed`` when ``give_up``.
        An item that no longer exists is ignored."""
        raise NotImplementedError(f"{type(self).__name__} has no outbox")

    async def outbox_items(self, state: str | None = None) -> list[OutboxItem]:
        """Every outbox item (of ``state``: pending | failed), by due time (tests, the operator)."""
        raise NotImplementedError(f"{type(self).__name__} has no outbox")

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

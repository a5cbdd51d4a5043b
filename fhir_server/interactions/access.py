"""What the caller may do, as interactions see it, and the transaction guard that enforces it on writes.

``Access`` is the interface the security layer implements from the caller's SMART scopes; the default
instance allows everything (auth off, internal jobs). Permissions are SMART v2 letters: c r u d s.
``constraints(type, permissions)`` are the store conditions confining the data on which one of
``permissions`` is granted: ANDed into store queries, so nothing is filtered after the fact.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import forbidden, not_found
from ..search.indexing import IndexEntry
from ..store import ResourceVersion, Transaction
from ..store.base import StoreQuery
from ..store.query import Condition, IdIn, Search

NOTHING: tuple[Condition, ...] = (IdIn(()),)  # matches no resource: the type is out of reach
ANY = "cruds"
READ_OR_SEARCH = "rs"
#: What a unit of work may look up (conditional criteria, conditional references, the version it replaces):
#: what the caller may read, update or delete; never what it may only create (that would disclose data).
LOOKUP = "rsud"
_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


class Access:
    """Unrestricted access; ``ScopedAccess`` (security layer) narrows it."""

    restricted = False

    def may(self, type_: str, permission: str) -> bool:
        return True

    def constraints(self, type_: str, permissions: str = READ_OR_SEARCH) -> tuple[Condition, ...]:
        return ()

    def sees_everything(self) -> bool:
        """True when every resource of every type is readable (system history, system export)."""
        return True

    def owner(self) -> str:
        """Who owns what this caller starts (an $export job): only they may poll or download it."""
        return ""

    async def prepare_write(
        self, tx: Transaction, version: ResourceVersion, entries: Sequence[IndexEntry]
    ) -> tuple[ResourceVersion, Sequence[IndexEntry]]:
        """The version actually written (the policy layer applies the patient's deposit settings)."""
        return version, entries

    async def check_write(self, tx: Transaction, version: ResourceVersion) -> None:
        """Rules on what a write may contain or change (the policy layer's); raise to refuse it."""

    def lookup_constraints(self, type_: str) -> tuple[Condition, ...]:
        """The conditions lookups inside a write are held to (see ``LOOKUP``)."""
        return self.constraints(type_, ANY)

    def require(self, type_: str, permission: str) -> None:
        if not self.may(type_, permission):
            raise forbidden(f"The access token does not grant {_NAMES[permission]} on {type_}")


UNRESTRICTED = Access()


async def within(source, type_: str, id_: str, where: tuple[Condition, ...]) -> bool:
    """Does live ``type_/id_`` meet ``where`` (a store or a transaction answers; no conditions: yes)?"""
    return not where or bool(await source.find_ids(Search(type_, (IdIn((id_,)), *where)), 1))


async def reachable(tx_or_store, access: Access, type_: str, id_: str, permissions: str) -> bool:
    """Is live ``type_/id_`` inside the data on which one of ``permissions`` is granted?"""
    return await within(tx_or_store, type_, id_, access.constraints(type_, permissions))


class GuardedTransaction(Transaction):
    """The store transaction as a restricted caller sees it: every write needs its permission and must
    start and end inside the data the caller may write; lookups only see what the caller may reach.
    Raising inside the unit of work aborts it, so a refused entry leaves nothing written."""

    def __init__(self, inner: Transaction, access: Access) -> None:
        self.inner = inner
        self.access = access
        self._reached: set[tuple[str, str]] = set()  # found inside the caller's data, unchanged since

    async def read_current(self, type_: str, id_: str) -> ResourceVersion | None:
        found = await self.inner.read_current(type_, id_)
        where = self.access.lookup_constraints(type_)
        if found is None or not where:
            return found
        # A deleted resource has no index entries to test: confined callers cannot reach it.
        if found.deleted or not await within(self.inner, type_, id_, where):
            raise not_found(f"{type_}/{id_} is not known")
        self._reached.add((type_, id_))
        return found

    async def read_version(self, type_: str, id_: str, version: int) -> ResourceVersion | None:
        await self.read_current(type_, id_)
        return await self.inner.read_version(type_, id_, version)

    async def find_ids(self, query: StoreQuery | Search, limit: int) -> list[str]:
        if isinstance(query, Search):
            query = Search(query.type, query.where + self.access.lookup_constraints(query.type))
        return await self.inner.find_ids(query, limit)

    async def put(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> ResourceVersion:
        permission = "d" if version.deleted else ("u" if version.version > 1 else "c")
        version, entries = await self.access.prepare_write(self.inner, version, entries)
        await self._before(version, permission)
        await self.access.check_write(self.inner, version)
        await self.inner.put(version, entries)
        await self._after(version, permission)
        return version

    async def rewrite_body(self, version: ResourceVersion) -> None:
        await self._before(version, "u")
        await self.inner.rewrite_body(version)

    async def replace_entries(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        """After ``rewrite_body`` of the current version ($meta-add/-delete): its new labels must keep it
        inside the caller's data."""
        await self.inner.replace_entries(version, entries)
        await self._after(version, "u")

    async def enqueue(self, item) -> None:
        await self.inner.enqueue(item)  # an outbox item is no resource: the server's own, never the caller's

    async def _before(self, version: ResourceVersion, permission: str) -> None:
        self.access.require(version.type, permission)
        key = (version.type, version.id)
        # read_current (an update reads first) has just tested the same conditions: not again.
        checked = key in self._reached and self.access.constraints(
            version.type, permission
        ) == self.access.lookup_constraints(version.type)
        self._reached.discard(key)  # the write changes what the resource's entries say
        if permission != "c" and not checked and not await reachable(self.inner, self.access, *key, permission):
            if await within(self.inner, *key, self.access.lookup_constraints(version.type)):
                # readable, not writable (e.g. a document only its author may change): say so
                action = "delete" if permission == "d" else "update"
                raise forbidden(f"The access token does not allow to {action} {version.type}/{version.id}")
            raise not_found(f"{version.type}/{version.id} is not known")

    async def _after(self, version: ResourceVersion, permission: str) -> None:
        if permission == "d":
            return
        if not await reachable(self.inner, self.access, version.type, version.id, permission):
            raise forbidden(
                f"The access token does not allow writing this {version.type}: "
                "it would fall outside the data the token may write (patient context or scope criteria)"
            )

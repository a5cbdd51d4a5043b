"""Process-local caches of the SQLite store's reads, exact by construction: current versions, and the
verdicts of the one-id visibility checks a confined caller's read makes (``interactions.access.within``).

Every commit that changes resources of a type bumps that type's row of ``type_generation`` in the same
transaction (``sqlite.py``). Before serving from a cache, a read asks SQLite ``PRAGMA data_version`` on the
reader connection: it changes whenever any other connection (this process's writer, another worker,
``fhir-server load``) commits to the database file. Only then are the generations read again, and what
depends on a type whose generation moved is dropped: a current version of that type, a verdict whose
conditions name it (the resource's own type, chain targets, ``_has`` sources). So an entry is only ever
served while no commit has touched what it was computed from, and the audit trail's commits (AuditEvents)
or the outbox's leave the caches of documents and patients in place.

Measured on a read of a 1.6 KB Patient: 60 → 45 µs of server CPU (the version check costs a fraction of the
two-table lookup it replaces); a professional's read of a document: the policy's visibility statement
(~100-170 µs) becomes a dictionary lookup. Bounded by entries and by bytes (LRU); verdicts are dropped all
at once when there are too many (they cost one statement each to find again).
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Hashable, Iterable

from .base import ResourceVersion

MAX_VERDICTS = 100_000


class Generations:
    """The types changed since the last look (by any connection), from ``PRAGMA data_version`` and the
    ``type_generation`` table."""

    def __init__(self) -> None:
        self._data_version: int | None = None
        self._known: dict[str, int] = {}

    def changed(self, conn: sqlite3.Connection) -> set[str] | None:
        """The types whose generation moved; None on the first look (nothing known yet: drop everything)."""
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        if data_version == self._data_version:
            return set()
        first = self._data_version is None
        # Read after data_version: the generations are at least as new as the version remembered, so a
        # commit in between is seen again (as a change of data_version) at the next look.
        now = dict(conn.execute("SELECT type, generation FROM type_generation").fetchall())
        moved = {t for t, g in now.items() if self._known.get(t) != g} | (self._known.keys() - now.keys())
        self._data_version, self._known = data_version, now
        return None if first else moved


class ReadCache:
    def __init__(self, max_entries: int, max_bytes: int = 64 * 1024 * 1024, max_verdicts: int = MAX_VERDICTS) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_verdicts = max_verdicts
        self._generations = Generations()
        self._entries: OrderedDict[tuple[str, str], ResourceVersion] = OrderedDict()
        self._bytes = 0
        self._keys_by_type: dict[str, set[tuple[str, str]]] = {}
        self._verdicts: dict[Hashable, bool] = {}
        self._verdicts_by_type: dict[str, set[Hashable]] = {}

    def refresh(self, conn: sqlite3.Connection) -> None:
        """Drop what a commit since the last look may have changed (call before any ``get``/``verdict``)."""
        changed = self._generations.changed(conn)
        if changed is None:
            self._clear()
            return
        for type_ in changed:
            for key in self._keys_by_type.pop(type_, ()):
                self._bytes -= len(self._entries.pop(key).body or b"")
            for key in self._verdicts_by_type.pop(type_, ()):
                self._verdicts.pop(key, None)

    def _clear(self) -> None:
        self._entries.clear()
        self._keys_by_type.clear()
        self._bytes = 0
        self._verdicts.clear()
        self._verdicts_by_type.clear()

    # --- current versions
    def get(self, conn: sqlite3.Connection, key: tuple[str, str]) -> ResourceVersion | None:
        """The cached current version, after checking nothing changed it since it was read."""
        self.refresh(conn)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: tuple[str, str], version: ResourceVersion) -> None:
        """Remember a version read after ``get`` checked the generations (a commit in between only makes
        the entry newer than they say, and drops it at the next look)."""
        size = len(version.body or b"")
        if size > self.max_bytes // 16:
            return  # a huge resource would evict everything else
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= len(previous.body or b"")
        self._entries[key] = version
        self._keys_by_type.setdefault(key[0], set()).add(key)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            dropped_key, dropped = self._entries.popitem(last=False)
            self._keys_by_type[dropped_key[0]].discard(dropped_key)
            self._bytes -= len(dropped.body or b"")

    # --- visibility verdicts
    def verdict(self, conn: sqlite3.Connection, key: Hashable) -> bool | None:
        self.refresh(conn)
        return self._verdicts.get(key)

    def put_verdict(self, key: Hashable, types: Iterable[str], value: bool) -> None:
        """Remember a verdict found after ``verdict`` checked the generations; ``types``: every type its
        conditions read (a change to any of them may change it)."""
        if len(self._verdicts) >= self.max_verdicts:
            self._verdicts.clear()
            self._verdicts_by_type.clear()
        self._verdicts[key] = value
        for type_ in types:
            self._verdicts_by_type.setdefault(type_, set()).add(key)

    def __len__(self) -> int:
        return len(self._entries)

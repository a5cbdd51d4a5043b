"""Embedded store on SQLite: WAL journal, one writer, concurrent readers, zero set-up.

Point reads and writes are microsecond-scale B-tree operations, so they run on the event loop thread:
a thread hop would cost more than the query. Writers are serialized by an asyncio lock (and, across
worker processes, by SQLite's own file lock with a busy timeout).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ..notify.outbox import OutboxItem
from . import sqlite_plan
from .base import (
    HistoryQuery,
    IndexEntry,
    Match,
    ResourceVersion,
    Store,
    StoreQuery,
    StoreUnavailable,
    Transaction,
    VersionConflict,
    as_search,
    decode_payload,
    encode_payload,
)
from .query import Condition, IdIn, Search, SortKey, types_read
from .read_cache import ReadCache
from .sqlite_query import (
    VERSION_COLUMNS,
    Compiler,
    compile_search,
    include_statement,
    keyset_after,
    revinclude_statement,
    sort_expression,
)

T = TypeVar("T")
MAX_BATCH = 64  # units of work per group commit
CHECKPOINT_INTERVAL = 0.2  # at most one WAL checkpoint per interval (after the batch that ends it)

SCHEMA = """
CREATE TABLE IF NOT EXISTS resource_version (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    superseded INTEGER,
    method TEXT NOT NULL,
    body BLOB,
    PRIMARY KEY (type, id, version)
);
CREATE INDEX IF NOT EXISTS resource_version_system_history
    ON resource_version (last_updated, type, id, version);
CREATE INDEX IF NOT EXISTS resource_version_type_history
    ON resource_version (type, last_updated, id, version);
CREATE TABLE IF NOT EXISTS resource (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (type, id),
    FOREIGN KEY (type, id, version) REFERENCES resource_version (type, id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS search_index (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    value TEXT,
    system TEXT,
    low REAL,
    high REAL,
    FOREIGN KEY (type, id) REFERENCES resource (type, id) ON DELETE CASCADE
);
-- Covering (id last): a matching entry yields its resource id without a table lookup.
DROP INDEX IF EXISTS search_index_value;
CREATE INDEX IF NOT EXISTS search_index_values ON search_index (type, param, value, system, id);
DROP INDEX IF EXISTS search_index_range;
DROP INDEX IF EXISTS search_index_ranges;
-- Partial: only dates/numbers/quantities have ranges; range conditions state "low IS NOT NULL".
CREATE INDEX IF NOT EXISTS search_index_low_high
    ON search_index (type, param, low, high, id) WHERE low IS NOT NULL;
-- A resource's own entries, by parameter and value: deletes and rewrites of a resource's entries, and the
-- per-candidate checks (EXISTS) of every condition once a selective one drives a search (sqlite_query.py).
DROP INDEX IF EXISTS search_index_owner;
CREATE INDEX IF NOT EXISTS search_index_by_owner ON search_index (type, id, param, value, system);
-- A counter per type, bumped by every commit that changes a resource of that type: the process caches of
-- reads (read_cache.py) drop only what such a commit may have changed.
CREATE TABLE IF NOT EXISTS type_generation (type TEXT PRIMARY KEY, generation INTEGER NOT NULL) WITHOUT ROWID;
-- The transactional outbox (notify/outbox.py): not resources; payload is JSON (orjson), due in µs.
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    payload BLOB NOT NULL,
    due INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    state TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX IF NOT EXISTS outbox_state_due ON outbox (state, due);
"""

_CURRENT = """
SELECT v.type, v.id, v.version, v.last_updated, v.method, v.body
FROM resource r JOIN resource_version v ON v.type = r.type AND v.id = r.id AND v.version = r.version
WHERE r.type = ? AND r.id = ?
"""
_VERSION = """
SELECT type, id, version, last_updated, method, body FROM resource_version
WHERE type = ? AND id = ? AND version = ?
"""


def _row_to_version(row: tuple) -> ResourceVersion:
    return ResourceVersion(row[0], row[1], row[2], row[3], row[4], row[5])


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a crash of the process never loses a committed transaction; only an OS
    # crash or power cut may lose the last ones (the database stays consistent). See README.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")
    # What is deleted (a destroyed space, purged AuditEvents) is overwritten with zeros, not left in free pages
    # for a copy of the file to show (docs/lifecycle.md).
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def _version(conn: sqlite3.Connection, type_: str, id_: str, version: int) -> ResourceVersion | None:
    row = conn.execute(_VERSION, (type_, id_, version)).fetchone()
    return _row_to_version(row) if row else None


def _rollback_if_open(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _settle(done: list[tuple[asyncio.Future, object, BaseException | None]]) -> None:
    for future, result, error in done:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy committed WAL frames into the database (PASSIVE: never waits for readers), on the writer thread,
    where its page writes and fsync stay off the event loop; cheap when there is little to copy."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _rollback_unit(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK TO unit")
    conn.execute("RELEASE unit")


def _current(conn: sqlite3.Connection, type_: str, id_: str) -> ResourceVersion | None:
    row = conn.execute(_CURRENT, (type_, id_)).fetchone()
    return _row_to_version(row) if row else None


_BUMP = (
    "INSERT INTO type_generation (type, generation) VALUES (?, 1)"
    " ON CONFLICT (type) DO UPDATE SET generation = generation + 1"
)


def _changed(conn: sqlite3.Connection, *types: str) -> None:
    """Resources of ``types`` change in this unit of work (read_cache.py)."""
    conn.executemany(_BUMP, [(t,) for t in dict.fromkeys(types)])


def _put(conn: sqlite3.Connection, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
    row = conn.execute("SELECT version FROM resource WHERE type = ? AND id = ?", (version.type, version.id)).fetchone()
    current = row[0] if row else 0
    if version.version != current + 1:
        raise VersionConflict(f"{version.type}/{version.id}: version {current} is current")
    conn.execute(
        "INSERT INTO resource_version (type, id, version, last_updated, method, body) VALUES (?, ?, ?, ?, ?, ?)",
        (version.type, version.id, version.version, version.last_updated, version.method, version.body),
    )
    if current:
        conn.execute(
            "UPDATE resource_version SET superseded = ? WHERE type = ? AND id = ? AND version = ?",
            (version.last_updated, version.type, version.id, current),
        )
    conn.execute(
        "INSERT INTO resource (type, id, version, deleted) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, deleted = excluded.deleted",
        (version.type, version.id, version.version, int(version.deleted)),
    )
    if current:
        conn.execute("DELETE FROM search_index WHERE type = ? AND id = ?", (version.type, version.id))
    if entries and not version.deleted:
        conn.executemany(
            "INSERT INTO search_index (type, id, param, value, system, low, high) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(version.type, version.id, *e) for e in entries],
        )
    _changed(conn, version.type)


def _append(conn: sqlite3.Connection, versions: Sequence[tuple[ResourceVersion, Sequence[IndexEntry]]]) -> None:
    conn.executemany(
        "INSERT INTO resource_version (type, id, version, last_updated, method, body) VALUES (?, ?, ?, ?, ?, ?)",
        [(v.type, v.id, v.version, v.last_updated, v.method, v.body) for v, _ in versions],
    )  # a reused id breaks the primary key: the unit fails, nothing is overwritten
    conn.executemany(
        "INSERT INTO resource (type, id, version, deleted) VALUES (?, ?, ?, 0)",
        [(v.type, v.id, v.version) for v, _ in versions],
    )
    conn.executemany(
        "INSERT INTO search_index (type, id, param, value, system, low, high) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(v.type, v.id, *e) for v, entries in versions for e in entries],
    )
    _changed(conn, *(v.type for v, _ in versions))


class SQLiteTransaction(Transaction):
    """A unit of work's statements run inline, on the event loop: once the batch holds the write lock
    (BEGIN IMMEDIATE, on the writer thread) they never wait for a lock, and with synchronous=NORMAL and
    checkpoints moved to the writer thread they never wait for the disk either; a hop to a thread per
    statement (~70 µs of CPU) cost as much as the statement. ``_run`` still offers the writer thread to
    long-running work (the bulk loader's replay)."""

    def __init__(self, conn: sqlite3.Connection, run: Callable[..., Awaitable]) -> None:
        self._conn = conn
        self._run = run

    async def read_current(self, type_: str, id_: str) -> ResourceVersion | None:
        return _current(self._conn, type_, id_)

    async def read_version(self, type_: str, id_: str, version: int) -> ResourceVersion | None:
        return _version(self._conn, type_, id_, version)

    async def find_ids(self, query: StoreQuery | Search, limit: int) -> list[str]:
        return _find_ids(self._conn, query, limit)

    async def put(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        _put(self._conn, version, entries)

    async def append(self, versions: Sequence[tuple[ResourceVersion, Sequence[IndexEntry]]]) -> None:
        # Inline, in three statements. Not on the writer thread: binding the rows holds the GIL there, and the
        # event loop's own queries then wait for it at every step (measured: ~30 % fewer audited reads/s).
        _append(self._conn, versions)

    async def rewrite_body(self, version: ResourceVersion) -> None:
        _rewrite_body(self._conn, version)

    async def replace_entries(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        _replace_entries(self._conn, version, entries)

    async def purge(self, type_: str, ids: Sequence[str]) -> int:
        return _purge(self._conn, type_, ids)

    async def enqueue(self, item: OutboxItem) -> None:
        self._conn.execute(
            "INSERT INTO outbox (id, channel, payload, due, attempts, last_error, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (item.id, item.channel, encode_payload(item.payload), item.due, item.attempts, item.last_error, item.state),
        )


_OUTBOX_COLUMNS = "id, channel, payload, due, attempts, last_error, state"


def _row_to_item(row: tuple) -> OutboxItem:
    return OutboxItem(row[0], row[1], decode_payload(row[2]), row[3], row[4], row[5], row[6])


def _due_where(now: int, channels: Sequence[str] | None) -> tuple[str, list[Any]]:
    where, args = "state = 'pending' AND due <= ?", [now]
    if channels is not None:
        where += f" AND channel IN ({','.join('?' * len(channels))})"
        args.extend(channels)
    return where, args


def _outbox_claim(
    conn: sqlite3.Connection, now: int, lease_until: int, limit: int, channels: Sequence[str] | None
) -> list[OutboxItem]:
    """In a unit of work, which holds the database's write lock (BEGIN IMMEDIATE): no other process claims
    between the SELECT and the UPDATE."""
    where, args = _due_where(now, channels)
    rows = conn.execute(
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE {where} ORDER BY due, id LIMIT ?", [*args, limit]
    ).fetchall()
    conn.executemany("UPDATE outbox SET due = ? WHERE id = ?", [(lease_until, row[0]) for row in rows])
    return [_row_to_item((*row[:3], lease_until, *row[4:])) for row in rows]


def _outbox_settle(
    conn: sqlite3.Connection,
    item_id: str,
    delivered: bool,
    attempts: int,
    due: int | None,
    error: str | None,
    give_up: bool,
) -> None:
    if delivered:
        conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
        return
    conn.execute(
        "UPDATE outbox SET attempts = ?, last_error = ?, due = coalesce(?, due), state = ? WHERE id = ?",
        (attempts, error, due, "failed" if give_up else "pending", item_id),
    )


def _purge(conn: sqlite3.Connection, type_: str, ids: Sequence[str]) -> int:
    """Index entries, then the current pointer (it references its version), then every version."""
    found = 0
    for i in range(0, len(ids), 500):  # bound the number of SQL variables
        chunk = list(ids[i : i + 500])
        marks = ",".join("?" * len(chunk))
        conn.execute(f"DELETE FROM search_index WHERE type = ? AND id IN ({marks})", [type_, *chunk])
        found += conn.execute(f"DELETE FROM resource WHERE type = ? AND id IN ({marks})", [type_, *chunk]).rowcount
        conn.execute(f"DELETE FROM resource_version WHERE type = ? AND id IN ({marks})", [type_, *chunk])
    _changed(conn, type_)
    return found


def _rewrite_body(conn: sqlite3.Connection, version: ResourceVersion) -> None:
    changed = conn.execute(
        "UPDATE resource_version SET body = ? WHERE type = ? AND id = ? AND version = ? AND body IS NOT NULL",
        (version.body, version.type, version.id, version.version),
    ).rowcount
    if changed != 1:
        raise VersionConflict(f"{version.type}/{version.id}: no stored version {version.version} to rewrite")
    _changed(conn, version.type)


def _replace_entries(conn: sqlite3.Connection, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
    row = conn.execute("SELECT version, deleted FROM resource WHERE type = ? AND id = ?", (version.type, version.id))
    current = row.fetchone()
    if current is None or current[0] != version.version or current[1]:
        raise VersionConflict(f"{version.type}/{version.id}: version {version.version} is no longer current")
    conn.execute("DELETE FROM search_index WHERE type = ? AND id = ?", (version.type, version.id))
    conn.executemany(
        "INSERT INTO search_index (type, id, param, value, system, low, high) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(version.type, version.id, *e) for e in entries],
    )
    _changed(conn, version.type)


class _Where(NamedTuple):
    """A WHERE clause over ``resource r`` and the WITH clause its chains need (``statement`` joins them)."""

    sql: str
    args: list[Any]
    compiler: Compiler

    def statement(self, sql: str, args: list[Any]) -> tuple[str, list[Any]]:
        return self.compiler.statement(sql, args)


def _match_where(
    query: StoreQuery | Search, after: str | None = None, reverse: bool = False, walk: bool = False
) -> _Where:
    """WHERE clause over ``resource r`` for the live matches of a search (ids after/before ``after``);
    ``walk``: checked row by row (``sqlite_plan.py``)."""
    search = as_search(query)
    sql, args, compiler = compile_search(search, "r", walk)
    if after is not None:
        sql += f" AND r.id {'<' if reverse else '>'} ?"
        args.append(after)
    return _Where(f"r.type = ? AND r.deleted = 0 AND {sql}", [search.type, *args], compiler)


_ID_PLACEHOLDER = "\x00id"


@functools.lru_cache(maxsize=1024)
def _one_id_where(search: Search) -> _Where:
    """The visibility check of one id (reads, the write guard) compiled once per set of conditions: a
    confined caller's conditions are the same on every read, only the id changes."""
    return _match_where(Search(search.type, (IdIn((_ID_PLACEHOLDER,)), *search.where)))


def _one_id_check(search: Search) -> tuple[tuple[Search, str], frozenset[str]] | None:
    """(key, types read) of a search for one id under conditions; None for other searches."""
    first = search.where[0] if search.where else None
    if not isinstance(first, IdIn) or len(first.ids) != 1 or len(search.where) < 2:
        return None
    rest = Search(search.type, search.where[1:])
    try:
        return (rest, first.ids[0]), _types_read(rest)
    except TypeError:  # unhashable conditions
        return None


@functools.lru_cache(maxsize=1024)
def _types_read(search: Search) -> frozenset[str]:
    return types_read(search)


def _find_ids(conn: sqlite3.Connection, query: StoreQuery | Search, limit: int) -> list[str]:
    if limit <= 0:
        return []
    search = as_search(query)
    first = search.where[0] if search.where else None
    if isinstance(first, IdIn) and len(first.ids) == 1 and len(search.where) > 1:
        try:
            where = _one_id_where(Search(search.type, search.where[1:]))
        except TypeError:  # unhashable conditions
            where = None
        if where is not None:
            sql, args = where.statement(
                f"SELECT r.id FROM resource r WHERE {where.sql} ORDER BY r.id LIMIT ?", [*where.args, limit]
            )
            args = [first.ids[0] if a == _ID_PLACEHOLDER else a for a in args]
            return [row[0] for row in conn.execute(sql, args)]
    where = _match_where(query)
    sql, args = where.statement(
        f"SELECT r.id FROM resource r WHERE {where.sql} ORDER BY r.id LIMIT ?", [*where.args, limit]
    )
    return [row[0] for row in conn.execute(sql, args)]


def _history_where(query: HistoryQuery) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if query.type is not None:
        where.append("type = ?")
        args.append(query.type)
    if query.id is not None:
        where.append("id = ?")
        args.append(query.id)
    if query.since is not None:
        where.append("last_updated >= ?")
        args.append(query.since)
    # Current at some point in [at_low, at_high): started before at_high, superseded after at_low.
    if query.at_high is not None:
        where.append("last_updated < ?")
        args.append(query.at_high)
    if query.at_low is not None:
        where.append("(superseded IS NULL OR superseded > ?)")
        args.append(query.at_low)
    return (" WHERE " + " AND ".join(where)) if where else "", args


class SQLiteStore(Store):
    def __init__(self, path: str, read_cache_entries: int = 0) -> None:
        """``read_cache_entries``: current versions kept for reads (``read_cache``; 0: none)."""
        self.path = path
        self._read_cache_entries = read_cache_entries
        self._cache: ReadCache | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._pending: deque[tuple[Callable, asyncio.Future]] = deque()
        self._batcher: asyncio.Task | None = None
        self._checkpointing: asyncio.Future | None = None
        self._checkpointed = 0.0  # time.monotonic() of the last checkpoint started
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._sizes = sqlite_plan.Sizes()  # resources per type, for estimates
        self._densities = sqlite_plan.Densities()  # which searches are broad (their plan)

    async def start(self) -> None:
        if self._writer is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = _connect(self.path)
            self._writer.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on the writer thread
            self._writer.executescript(SCHEMA)
            # Planner statistics (the owner index vs the value index is a statistics call); cheap and
            # approximate with the analysis limit.
            self._writer.execute("PRAGMA analysis_limit=1000")
            self._writer.execute("PRAGMA optimize")
            self._reader = _connect(self.path) if self.path != ":memory:" else self._writer
            if self._read_cache_entries > 0 and self._reader is not self._writer:  # data_version needs two
                self._cache = ReadCache(self._read_cache_entries)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._batcher is not None:
            await asyncio.gather(self._batcher, return_exceptions=True)
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        for conn in {id(c): c for c in (self._reader, self._writer) if c is not None}.values():
            conn.close()
        self._writer_thread.shutdown(wait=True)
        self._writer = self._reader = None

    @property
    def _read_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StoreUnavailable("store is not started")
        return self._reader

    async def read_current(self, type_: str, id_: str) -> ResourceVersion | None:
        conn, cache, key = self._read_conn, self._cache, (type_, id_)
        if cache is not None and (cached := cache.get(conn, key)) is not None:
            return cached
        row = conn.execute(_CURRENT, key).fetchone()
        found = _row_to_version(row) if row else None
        if cache is not None and found is not None:
            cache.put(key, found)
        return found

    async def read_version(self, type_: str, id_: str, version: int) -> ResourceVersion | None:
        row = self._read_conn.execute(_VERSION, (type_, id_, version)).fetchone()
        return _row_to_version(row) if row else None

    async def history(self, query: HistoryQuery) -> list[ResourceVersion]:
        where, args = _history_where(query)
        if query.before is not None:
            where += (" AND " if where else " WHERE ") + "(last_updated, type, id, version) < (?, ?, ?, ?)"
            args.extend(query.before)
        sql = (
            "SELECT type, id, version, last_updated, method, body FROM resource_version"
            f"{where} ORDER BY last_updated DESC, type DESC, id DESC, version DESC LIMIT ?"
        )
        return [_row_to_version(r) for r in self._read_conn.execute(sql, [*args, query.limit])]

    async def count_history(self, query: HistoryQuery) -> int:
        where, args = _history_where(query)
        return self._read_conn.execute(f"SELECT count(*) FROM resource_version{where}", args).fetchone()[0]

    async def find_ids(self, query: StoreQuery | Search, limit: int) -> list[str]:
        conn, cache = self._read_conn, self._cache
        if cache is None or limit < 1 or not isinstance(query, Search):
            return _find_ids(conn, query, limit)
        checked = _one_id_check(query)
        if checked is None:
            return _find_ids(conn, query, limit)
        # A visibility check of one id (a confined caller's read): its verdict is kept until a commit
        # changes a type its conditions read (read_cache.py).
        key, types = checked
        verdict = cache.verdict(conn, key)
        if verdict is None:
            verdict = bool(_find_ids(conn, query, 1))
            cache.put_verdict(key, types, verdict)
        return [key[1]] if verdict else []

    async def search_page(
        self,
        query: StoreQuery | Search,
        limit: int,
        *,
        sort: tuple[SortKey, ...] = (),
        after: tuple | None = None,
        reverse: bool = False,
    ) -> list[Match]:
        if limit <= 0:
            return []
        if not sort:  # id order: a plain B-tree walk of the resource table
            walk = self._densities.of(self._read_conn, as_search(query))  # broad: walk it, checking each row
            where = _match_where(query, after[0] if after else None, reverse, walk)
            rows = self._read_conn.execute(
                *where.statement(
                    f"SELECT {VERSION_COLUMNS} FROM resource r"
                    " JOIN resource_version v ON v.type = r.type AND v.id = r.id AND v.version = r.version"
                    f" WHERE {where.sql} ORDER BY r.id {'DESC' if reverse else 'ASC'} LIMIT ?",
                    [*where.args, limit],
                )
            )
            return [Match(_row_to_version(row), (row[1],)) for row in rows]
        return self._sorted_page(query, limit, sort, after, reverse)

    def _sorted_page(
        self, query: StoreQuery | Search, limit: int, sort: tuple[SortKey, ...], after: tuple | None, reverse: bool
    ) -> list[Match]:
        keys, args = [], []
        for i, key in enumerate(sort):
            expression, expression_args = sort_expression(key)
            keys.append(f"{expression} AS k{i}")
            args.extend(expression_args)
        match = _match_where(query)
        where, where_args = match.sql, match.args
        columns = [(f"m.k{i}", key.descending != reverse) for i, key in enumerate(sort)] + [("m.id", reverse)]
        outer, outer_args = keyset_after(columns, after) if after else ("1", [])
        order = ", ".join(f"{c} {'DESC' if d else 'ASC'}" for c, d in columns)
        sql = (
            f"SELECT {VERSION_COLUMNS}, {', '.join(c for c, _ in columns[:-1])} FROM"
            f" (SELECT r.type, r.id, r.version, {', '.join(keys)} FROM resource r WHERE {where}) m"
            " JOIN resource_version v ON v.type = m.type AND v.id = m.id AND v.version = m.version"
            f" WHERE {outer} ORDER BY {order} LIMIT ?"
        )
        rows = self._read_conn.execute(*match.statement(sql, [*args, *where_args, *outer_args, limit]))
        return [Match(_row_to_version(row), (*row[6:], row[1])) for row in rows]

    async def include(
        self, source_type: str, source_ids: Sequence[str], param: str, targets: Mapping[str, tuple[Condition, ...]]
    ) -> list[ResourceVersion]:
        if not source_ids or not targets:
            return []
        sql, args = include_statement(source_type, list(source_ids), param, targets)
        return [_row_to_version(row) for row in self._read_conn.execute(sql, args)]

    async def revinclude(self, refs: Sequence[str], source: Search, param: str) -> list[ResourceVersion]:
        if not refs:
            return []
        sql, args = revinclude_statement(list(refs), source, param)
        return [_row_to_version(row) for row in self._read_conn.execute(sql, args)]

    async def count(self, query: StoreQuery | Search) -> int:
        found = sqlite_plan.exact_entry_count(self._read_conn, as_search(query))  # one token: index entries only
        if found is not None:
            return found
        where = _match_where(query)
        return self._read_conn.execute(
            *where.statement(f"SELECT count(*) FROM resource r WHERE {where.sql}", where.args)
        ).fetchone()[0]

    async def bounded_count(self, query: StoreQuery | Search, cap: int) -> int | None:
        search = as_search(query)
        if self._densities.of(self._read_conn, search):
            return None  # broad: counting means visiting every match
        where = _match_where(search)
        found = self._read_conn.execute(
            *where.statement(
                f"SELECT count(*) FROM (SELECT 1 FROM resource r WHERE {where.sql} LIMIT ?)", [*where.args, cap + 1]
            )
        ).fetchone()[0]
        return found if found <= cap else None

    async def estimate(self, query: StoreQuery | Search, sample: tuple[int, str] | None = None) -> int | None:
        search = as_search(query)
        if sample is None:
            walk = self._densities.of(self._read_conn, search)
            where = _match_where(search, walk=walk)
            ids = [row[0] for row in self._read_conn.execute(
                *where.statement(f"SELECT r.id FROM resource r WHERE {where.sql} ORDER BY r.id LIMIT ?",
                                 [*where.args, sqlite_plan.SAMPLE])
            )]  # fmt: skip
            if len(ids) < sqlite_plan.SAMPLE:
                return len(ids)  # every match: the exact number
            sample = (len(ids), ids[-1])
        return sqlite_plan.scaled(self._read_conn, self._sizes, search.type, *sample)

    async def outbox_claim(
        self, now: int, lease_until: int, limit: int, *, channels: Sequence[str] | None = None
    ) -> list[OutboxItem]:
        if limit <= 0 or (channels is not None and not channels):
            return []
        where, args = _due_where(now, channels)
        if self._read_conn.execute(f"SELECT 1 FROM outbox WHERE {where} LIMIT 1", args).fetchone() is None:
            return []  # nothing due (the usual poll): no write transaction

        async def claim(tx: Transaction) -> list[OutboxItem]:
            assert isinstance(tx, SQLiteTransaction)
            return _outbox_claim(tx._conn, now, lease_until, limit, channels)

        return await self.transact(claim)

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
        async def settle(tx: Transaction) -> None:
            assert isinstance(tx, SQLiteTransaction)
            _outbox_settle(tx._conn, item_id, delivered, attempts, due, error, give_up)

        await self.transact(settle)

    async def outbox_items(self, state: str | None = None) -> list[OutboxItem]:
        where, args = ("WHERE state = ?", [state]) if state is not None else ("", [])
        rows = self._read_conn.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox {where} ORDER BY due, id", args)
        return [_row_to_item(row) for row in rows]

    async def transact(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Group commit: writers that queue up while a batch runs share its COMMIT.

        Each unit of work runs alone, in order, inside its own SAVEPOINT (a failure rolls back that unit
        only, and its caller gets the exception); the batch commits once, and only then are the callers
        answered, so an acknowledged write is a committed one. One COMMIT per batch instead of one per
        write divides the WAL traffic (many writes touch the same index pages) and the syncs.
        """
        if self._writer is None:
            raise StoreUnavailable("store is not started")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((work, future))
        if self._batcher is None or self._batcher.done():
            # Its own task: a caller that goes away (cancelled request) cannot abandon an open batch.
            self._batcher = asyncio.create_task(self._run_batches(self._writer))
        return await future

    async def _on_writer(self, fn: Callable, *args: object) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, fn, *args)

    async def _run_batches(self, conn: sqlite3.Connection) -> None:
        while self._pending:
            done: list[tuple[asyncio.Future, object, BaseException | None]] = []
            try:
                # On the writer thread: it may wait for another process's write lock (busy timeout).
                await self._on_writer(conn.execute, "BEGIN IMMEDIATE")
                while self._pending and len(done) < MAX_BATCH:
                    work, future = self._pending.popleft()
                    done.append((future, *await self._run_one(conn, work, self._on_writer)))
                    if not self._pending:
                        await asyncio.sleep(0)  # let requests already in flight join this batch
                conn.execute("COMMIT")  # no checkpoint here (wal_autocheckpoint=0), no fsync (NORMAL)
            except BaseException as exc:  # nothing committed: every caller of the batch learns it
                await self._on_writer(_rollback_if_open, conn)
                error = StoreUnavailable(f"write failed, nothing was committed: {exc}")
                _settle([(f, None, e if e is not None else error) for f, _, e in done])
                self._fail_pending(error)
                if not isinstance(exc, Exception):
                    raise
                return
            _settle(done)
            # Not awaited: callers are answered now; the next batch's BEGIN queues behind it on the thread. At
            # most every CHECKPOINT_INTERVAL under load: a checkpoint fsyncs the database, and copying a page
            # once for many batches costs far less than once per batch (the next batch waits for it).
            now = time.monotonic()
            if now - self._checkpointed >= CHECKPOINT_INTERVAL:
                self._checkpointed = now
                loop = asyncio.get_running_loop()
                self._checkpointing = loop.run_in_executor(self._writer_thread, _checkpoint, conn)

    @staticmethod
    async def _run_one(conn: sqlite3.Connection, work: Callable, run: Callable) -> tuple[object, BaseException | None]:
        conn.execute("SAVEPOINT unit")
        try:
            result = await work(SQLiteTransaction(conn, run))
        except BaseException as exc:
            _rollback_unit(conn)
            return None, exc
        conn.execute("RELEASE unit")
        return result, None

    def _fail_pending(self, error: Exception) -> None:
        while self._pending:
            _, future = self._pending.popleft()
            if not future.cancelled():
                future.set_exception(error)

"""Store on MongoDB (replica set or sharded cluster, ≥ 6): pymongo's native asyncio client.

Documents
---------
``resource_version``: one document per version, never deleted::

    {_id: "Type/id/version", t, i, v, lu: last_updated µs (int64), sup: last_updated of the next version
     (missing while current), m: method, body: the exact JSON bytes (BSON binary) or null for a deletion}

Bodies are raw bytes on purpose: reads are byte-identical on both stores, and FHIR decimals keep their
precision (``1.50`` would become the double 1.5 as BSON).

``resource``: the current version of each resource and its search index entries::

    {_id: "Type/id", t, i, v, del: bool, idx: [{p: param, v?: value, s?: system, lo?: low, hi?: high}]}

An index entry omits its None fields; ``{s: null}`` then matches exactly the entries without a system,
which is SQLite's ``system IS NULL`` (an empty-string system is stored and matched as "").

Indexes (created by ``start``, idempotent)
------------------------------------------
``resource_version``:
  * ``version_unique`` ``{t, i, v}`` unique: the version key (also a safety net against double writes).
  * ``system_history`` ``{lu, t, i, v}``: whole-system history, newest first (index walked backwards).
  * ``type_history`` ``{t, lu, i, v}``: history of a type, and of one resource (``i`` filtered on it).
``resource``:
  * ``current_by_type`` ``{t, del, i}``: live resources of a type in id order (``find_ids``), and the
    counts an estimate scales by (``estimate``: index keys only).
  * ``index_value`` ``{t, idx.p, idx.v, idx.s}``: multikey, token / string / reference matches.
  * ``index_range`` ``{t, idx.p, idx.lo, idx.hi}``: multikey, date / number / quantity ranges.

``outbox`` (the transactional outbox, notify/outbox.py; not resources)::

    {_id: item id, channel, payload: JSON bytes (as SQLite's), due: µs, attempts, last_error, state}

  * ``outbox_due`` ``{state, due}``: the due pending items, oldest first (``outbox_claim``).

Queries on ``idx`` always use ``$elemMatch`` so that every condition hits the same index entry.

Transactions: every ``transact`` is one multi-document transaction (read concern majority, write concern
``w`` — majority by default —, primary reads), run like pymongo's ``with_transaction`` on one session:
retried as a whole on a ``TransientTransactionError`` (a write conflict, code 112: another transaction
wrote the same document first; a failover), its commit retried alone on ``UnknownTransactionCommitResult``
(``commitTransaction`` is idempotent). A document over MongoDB's 16 MiB limit is refused with a 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from pymongo import AsyncMongoClient, ReadPreference, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from ..errors import FhirError, Issue
from ..notify.outbox import OutboxItem
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
from .mongo_query import compile_search, sorted_pipeline
from .query import Condition, Search, SortKey

T = TypeVar("T")

DEFAULT_DATABASE = "fhir"
VERSIONS = "resource_version"
CURRENT = "resource"
OUTBOX = "outbox"

#: Attempts of a whole transaction when the server reports a transient error: a write conflict (two
#: transactions wrote the same document: the later writer fails at once, code 112), a failover. Between
#: attempts a jittered exponential backoff; a conflict that outlasts them is a VersionConflict (409).
MAX_TRANSACTION_ATTEMPTS = 10
#: Attempts of a commit whose outcome is unknown (network error, write concern timeout).
MAX_COMMIT_ATTEMPTS = 5
#: No new attempt (of the transaction or of its commit) once this long has passed since the first.
RETRY_SECONDS = 60.0
_BACKOFF_INITIAL = 0.005
_BACKOFF_MAX = 0.25
_WRITE_CONFLICT = 112  # server error code WriteConflict
_MAX_TIME_EXPIRED = 50  # MaxTimeMSExpired: a commit that ran out of time is not retried (as with_transaction)
#: BSONObjectTooLarge (an insert, upsert or update result over 16 MiB); 17419 / 17420, the same before 4.4.
_TOO_LARGE = frozenset({10334, 17419, 17420})

#: Matches an estimate samples when no page gave it its sample (as SQLite's, store/sqlite_plan.py).
SAMPLE = 100
#: Seconds a type's live size is reused for estimates.
SIZE_TTL = 30.0

_VERSION_FIELDS = {"_id": 0, "t": 1, "i": 1, "v": 1, "lu": 1, "m": 1, "body": 1}
_NEWEST_FIRST = [("lu", -1), ("t", -1), ("i", -1), ("v", -1)]
# Same order when the type is fixed by the query, spelled so that it walks ``type_history`` backwards.
_NEWEST_FIRST_IN_TYPE = [("t", -1), ("lu", -1), ("i", -1), ("v", -1)]


def database_name(url: str) -> str:
    """``mongodb://h:27017/mydb?…`` → ``mydb``; no path → ``fhir``."""
    name = unquote(urlsplit(url).path.lstrip("/"))
    return name or DEFAULT_DATABASE


def _parse_w(write_concern: str | int) -> str | int:
    """``"majority"`` / a tag set name stays a string, ``"1"`` becomes the number 1."""
    if isinstance(write_concern, int):
        return write_concern
    text = write_concern.strip()
    return int(text) if text.isdigit() else text


def _version_doc(version: ResourceVersion) -> dict[str, Any]:
    return {
        "_id": f"{version.type}/{version.id}/{version.version}",
        "t": version.type,
        "i": version.id,
        "v": version.version,
        "lu": version.last_updated,
        "m": version.method,
        "body": version.body,
    }


def _entry_doc(entry: IndexEntry) -> dict[str, Any]:
    param, value, system, low, high = entry  # positional: prepared entries may arrive as plain tuples
    doc: dict[str, Any] = {"p": param}
    if value is not None:
        doc["v"] = value
    if system is not None:
        doc["s"] = system
    # Floats like SQLite's REAL columns (and no int64 overflow for huge integers).
    if low is not None:
        doc["lo"] = float(low)
    if high is not None:
        doc["hi"] = float(high)
    return doc


def _to_version(doc: dict[str, Any]) -> ResourceVersion:
    body = doc.get("body")
    return ResourceVersion(doc["t"], doc["i"], doc["v"], doc["lu"], doc["m"], bytes(body) if body is not None else None)


async def _find_ids(
    current: AsyncCollection, query: StoreQuery | Search, limit: int, session: AsyncClientSession | None
) -> list[str]:
    return [doc["i"] for doc in await _find_current(current, query, limit, None, session)]


async def _find_current(
    current: AsyncCollection,
    query: StoreQuery | Search,
    limit: int,
    after: str | None,
    session: AsyncClientSession | None,
    reverse: bool = False,
) -> list[dict[str, Any]]:
    """``{i, v}`` of the live matches in id order (served by the ``current_by_type`` index)."""
    if limit <= 0:
        return []
    flt = await compile_search(current, as_search(query), session)
    if after is not None:
        flt["$and"].append({"i": {"$lt" if reverse else "$gt": after}})
    cursor = current.find(flt, {"_id": 0, "i": 1, "v": 1}, session=session).sort("i", -1 if reverse else 1).limit(limit)
    return [doc async for doc in cursor]


def _history_filter(query: HistoryQuery) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = []
    if query.type is not None:
        conditions.append({"t": query.type})
    if query.id is not None:
        conditions.append({"i": query.id})
    if query.since is not None:
        conditions.append({"lu": {"$gte": query.since}})
    # Current at some point in [at_low, at_high): started before at_high, superseded after at_low.
    if query.at_high is not None:
        conditions.append({"lu": {"$lt": query.at_high}})
    if query.at_low is not None:
        conditions.append({"$or": [{"sup": None}, {"sup": {"$gt": query.at_low}}]})
    return {"$and": conditions} if conditions else {}


def _before_filter(before: tuple[int, str, str, int]) -> dict[str, Any]:
    """(lu, t, i, v) < before, lexicographically, as an ``$or`` chain (plus a bound for the index)."""
    lu, t, i, v = before
    return {
        "$and": [
            {"lu": {"$lte": lu}},
            {
                "$or": [
                    {"lu": {"$lt": lu}},
                    {"lu": lu, "t": {"$lt": t}},
                    {"lu": lu, "t": t, "i": {"$lt": i}},
                    {"lu": lu, "t": t, "i": i, "v": {"$lt": v}},
                ]
            },
        ]
    }


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Driver errors outside transactions → StoreUnavailable."""
    try:
        yield
    except PyMongoError as exc:
        raise StoreUnavailable(f"MongoDB: {exc}") from exc


class ResourceTooLarge(FhirError):
    """A version or current-resource document over MongoDB's 16 MiB BSON limit (body or index entries)."""


@contextlib.contextmanager
def _size_checked(key: str) -> Iterator[None]:
    """The driver's (client-side) or the server's "document too large" → ResourceTooLarge (413)."""
    try:
        yield
    except DocumentTooLarge as exc:  # not a PyMongoError: raised before anything is sent
        raise _too_large(key) from exc
    except OperationFailure as exc:
        if exc.code in _TOO_LARGE:
            raise _too_large(key) from exc
        raise


def _too_large(key: str) -> ResourceTooLarge:
    message = f"{key}: too large to store (MongoDB limits a document, body or search index entries, to 16 MiB)"
    return ResourceTooLarge(413, [Issue("too-long", message)])


def _is_write_conflict(exc: PyMongoError) -> bool:
    return isinstance(exc, OperationFailure) and exc.code == _WRITE_CONFLICT


def _is_transient(exc: PyMongoError) -> bool:
    """Worth running the whole transaction again (MongoDB labels write conflicts TransientTransactionError)."""
    if isinstance(exc, ServerSelectionTimeoutError):
        return False  # already waited serverSelectionTimeoutMS: the server is gone, not busy
    return exc.has_error_label("TransientTransactionError") or _is_write_conflict(exc)


def _is_unknown_commit(exc: PyMongoError) -> bool:
    """A commit that may or may not have been applied: worth sending again (commitTransaction is idempotent)."""
    max_time_expired = isinstance(exc, OperationFailure) and exc.code == _MAX_TIME_EXPIRED
    return exc.has_error_label("UnknownTransactionCommitResult") and not max_time_expired


class MongoTransaction(Transaction):
    """Every read and write of one ``transact`` attempt, bound to its session."""

    def __init__(self, db: AsyncDatabase, session: AsyncClientSession) -> None:
        self._versions = db[VERSIONS]
        self._current = db[CURRENT]
        self._outbox = db[OUTBOX]
        self._session = session

    async def read_current(self, type_: str, id_: str) -> ResourceVersion | None:
        return await _read_current(self._current, self._versions, type_, id_, self._session)

    async def read_version(self, type_: str, id_: str, version: int) -> ResourceVersion | None:
        doc = await self._versions.find_one({"_id": f"{type_}/{id_}/{version}"}, _VERSION_FIELDS, session=self._session)
        return _to_version(doc) if doc else None

    async def find_ids(self, query: StoreQuery | Search, limit: int) -> list[str]:
        return await _find_ids(self._current, query, limit, self._session)

    async def put(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        session = self._session
        key = f"{version.type}/{version.id}"
        row = await self._current.find_one({"_id": key}, {"_id": 0, "v": 1}, session=session)
        current = row["v"] if row else 0
        if version.version != current + 1:
            raise VersionConflict(f"{key}: version {current} is current")
        with _size_checked(key):
            try:
                await self._versions.insert_one(_version_doc(version), session=session)
            except DuplicateKeyError as exc:
                raise VersionConflict(f"{key}: version {version.version} already exists") from exc
            if current:
                await self._versions.update_one(
                    {"_id": f"{key}/{current}"}, {"$set": {"sup": version.last_updated}}, session=session
                )
            doc = {
                "t": version.type,
                "i": version.id,
                "v": version.version,
                "del": version.deleted,
                "idx": [] if version.deleted else [_entry_doc(e) for e in entries],
            }
            if current:
                result = await self._current.replace_one({"_id": key, "v": current}, doc, session=session)
                if result.matched_count != 1:
                    raise VersionConflict(f"{key}: version {current} is no longer current")
            else:
                try:
                    await self._current.insert_one({"_id": key, **doc}, session=session)
                except DuplicateKeyError as exc:
                    raise VersionConflict(f"{key}: created concurrently") from exc

    async def rewrite_body(self, version: ResourceVersion) -> None:
        flt = {"_id": f"{version.type}/{version.id}/{version.version}", "body": {"$ne": None}}
        with _size_checked(f"{version.type}/{version.id}"):
            result = await self._versions.update_one(flt, {"$set": {"body": version.body}}, session=self._session)
        if result.matched_count != 1:
            raise VersionConflict(f"{version.type}/{version.id}: no stored version {version.version} to rewrite")

    async def replace_entries(self, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        key = f"{version.type}/{version.id}"
        flt = {"_id": key, "v": version.version, "del": False}
        update = {"$set": {"idx": [_entry_doc(e) for e in entries]}}
        with _size_checked(key):
            result = await self._current.update_one(flt, update, session=self._session)
        if result.matched_count != 1:
            raise VersionConflict(f"{key}: version {version.version} is no longer current")

    async def purge(self, type_: str, ids: Sequence[str]) -> int:
        """The audit retention purge: the only deletion of ``resource_version`` documents (with their
        ``resource`` document, which holds the index entries)."""
        found = 0
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            result = await self._current.delete_many(
                {"_id": {"$in": [f"{type_}/{id_}" for id_ in chunk]}}, session=self._session
            )
            found += result.deleted_count
            await self._versions.delete_many({"t": type_, "i": {"$in": chunk}}, session=self._session)
        return found

    async def enqueue(self, item: OutboxItem) -> None:
        await self._outbox.insert_one(_outbox_doc(item), session=self._session)


def _outbox_doc(item: OutboxItem) -> dict[str, Any]:
    return {
        "_id": item.id,
        "channel": item.channel,
        "payload": encode_payload(item.payload),
        "due": item.due,
        "attempts": item.attempts,
        "last_error": item.last_error,
        "state": item.state,
    }


def _to_item(doc: dict[str, Any]) -> OutboxItem:
    return OutboxItem(
        doc["_id"],
        doc["channel"],
        decode_payload(bytes(doc["payload"])),
        doc["due"],
        doc.get("attempts", 0),
        doc.get("last_error"),
        doc.get("state", "pending"),
    )


async def _read_current(
    current: AsyncCollection,
    versions: AsyncCollection,
    type_: str,
    id_: str,
    session: AsyncClientSession | None,
) -> ResourceVersion | None:
    key = f"{type_}/{id_}"
    row = await current.find_one({"_id": key}, {"_id": 0, "v": 1}, session=session)
    if row is None:
        return None
    # Versions are immutable (bar ``sup``), so a concurrent update between the two reads is harmless:
    # the answer is the version that was current at the first read.
    doc = await versions.find_one({"_id": f"{key}/{row['v']}"}, _VERSION_FIELDS, session=session)
    return _to_version(doc) if doc else None


class MongoStore(Store):
    def __init__(self, url: str, write_concern: str | int = "majority") -> None:
        self.url = url
        self.database_name = database_name(url)
        self._w = _parse_w(write_concern)
        self._client: AsyncMongoClient | None = None
        self._db: AsyncDatabase | None = None
        self._sizes: dict[str, tuple[float, int]] = {}  # type → (time.monotonic(), live resources), for estimates

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        try:
            client: AsyncMongoClient = AsyncMongoClient(self.url, w=self._w, appname="fhir-server")
        except (PyMongoError, ValueError, TypeError) as exc:
            raise StoreUnavailable(f"invalid MongoDB URL or option: {exc}") from exc
        db = client[self.database_name]
        try:
            hello = await client.admin.command("hello")
            standalone = "setName" not in hello and hello.get("msg") != "isdbgrid"
            if not standalone:
                await self._create_indexes(db)
        except PyMongoError as exc:
            await client.close()
            raise StoreUnavailable(f"cannot use MongoDB database {self.database_name!r}: {exc}") from exc
        if standalone:
            await client.close()
            raise StoreUnavailable(
                "MongoDB runs standalone: every write is a multi-document transaction, which needs a replica set"
                " (a single-node one is fine) or a sharded cluster"
            )
        self._client, self._db = client, db

    @staticmethod
    async def _create_indexes(db: AsyncDatabase) -> None:
        versions, current = db[VERSIONS], db[CURRENT]
        await versions.create_index([("t", 1), ("i", 1), ("v", 1)], name="version_unique", unique=True)
        await versions.create_index([("lu", 1), ("t", 1), ("i", 1), ("v", 1)], name="system_history")
        await versions.create_index([("t", 1), ("lu", 1), ("i", 1), ("v", 1)], name="type_history")
        await current.create_index([("t", 1), ("del", 1), ("i", 1)], name="current_by_type")
        await current.create_index([("t", 1), ("idx.p", 1), ("idx.v", 1), ("idx.s", 1)], name="index_value")
        await current.create_index([("t", 1), ("idx.p", 1), ("idx.lo", 1), ("idx.hi", 1)], name="index_range")
        await db[OUTBOX].create_index([("state", 1), ("due", 1)], name="outbox_due")

    async def close(self) -> None:
        client, self._client, self._db = self._client, None, None
        if client is not None:
            await client.close()

    @property
    def _database(self) -> AsyncDatabase:
        if self._db is None:
            raise StoreUnavailable("store is not started")
        return self._db

    # -- reads ---------------------------------------------------------------------------------------

    async def read_current(self, type_: str, id_: str) -> ResourceVersion | None:
        db = self._database
        with _unavailable():
            return await _read_current(db[CURRENT], db[VERSIONS], type_, id_, None)

    async def read_version(self, type_: str, id_: str, version: int) -> ResourceVersion | None:
        db = self._database
        with _unavailable():
            doc = await db[VERSIONS].find_one({"_id": f"{type_}/{id_}/{version}"}, _VERSION_FIELDS)
        return _to_version(doc) if doc else None

    async def history(self, query: HistoryQuery) -> list[ResourceVersion]:
        db = self._database
        flt = _history_filter(query)
        if query.before is not None:
            flt = {"$and": [flt, _before_filter(query.before)]} if flt else _before_filter(query.before)
        if query.limit <= 0:
            return []
        order = _NEWEST_FIRST_IN_TYPE if query.type is not None else _NEWEST_FIRST
        with _unavailable():
            cursor = db[VERSIONS].find(flt, _VERSION_FIELDS).sort(order).limit(query.limit)
            return [_to_version(doc) async for doc in cursor]

    async def count_history(self, query: HistoryQuery) -> int:
        db = self._database
        with _unavailable():
            return await db[VERSIONS].count_documents(_history_filter(query))

    async def find_ids(self, query: StoreQuery | Search, limit: int) -> list[str]:
        db = self._database
        with _unavailable():
            return await _find_ids(db[CURRENT], query, limit, None)

    async def search_page(
        self,
        query: StoreQuery | Search,
        limit: int,
        *,
        sort: tuple[SortKey, ...] = (),
        after: tuple | None = None,
        reverse: bool = False,
    ) -> list[Match]:
        """Two queries whatever the page size: the matching current docs, then their versions."""
        if limit <= 0:
            return []
        db = self._database
        search = as_search(query)
        with _unavailable():
            if sort:
                pipeline = await sorted_pipeline(db[CURRENT], search, sort, after, limit, reverse)
                matches = await (await db[CURRENT].aggregate(pipeline)).to_list(None)
            else:
                matches = await _find_current(db[CURRENT], search, limit, after[0] if after else None, None, reverse)
            versions = await self._versions_of(search.type, matches)
        keys = [(*tuple(m.get(f"k{i}") for i in range(len(sort))), m["i"]) for m in matches]
        return [Match(versions[m["i"]], key) for m, key in zip(matches, keys, strict=True) if m["i"] in versions]

    async def _versions_of(self, type_: str, matches: list[dict[str, Any]]) -> dict[str, ResourceVersion]:
        if not matches:
            return {}
        keys = [f"{type_}/{m['i']}/{m['v']}" for m in matches]
        docs = await self._database[VERSIONS].find({"_id": {"$in": keys}}, _VERSION_FIELDS).to_list(None)
        return {doc["i"]: _to_version(doc) for doc in docs}

    async def _current_versions(self, flt: dict[str, Any]) -> list[ResourceVersion]:
        db = self._database
        current = await db[CURRENT].find(flt, {"_id": 0, "t": 1, "i": 1, "v": 1}).to_list(None)
        keys = [f"{c['t']}/{c['i']}/{c['v']}" for c in current]
        if not keys:
            return []
        docs = await db[VERSIONS].find({"_id": {"$in": keys}}, _VERSION_FIELDS).to_list(None)
        return [_to_version(doc) for doc in docs]

    async def include(
        self, source_type: str, source_ids: Sequence[str], param: str, targets: Mapping[str, tuple[Condition, ...]]
    ) -> list[ResourceVersion]:
        if not source_ids or not targets:
            return []
        db = self._database
        with _unavailable():
            sources = db[CURRENT].find(
                {"_id": {"$in": [f"{source_type}/{i}" for i in source_ids]}, "del": False}, {"_id": 0, "idx": 1}
            )
            # reference → the versions named (None: the current one; see normalize.reference_rows)
            refs: dict[str, set[int | None]] = {}
            async for doc in sources:
                for e in doc.get("idx", ()):
                    value = e.get("v")
                    if e.get("p") == param and isinstance(value, str) and value.split("/", 1)[0] in targets:
                        version = e.get("lo")
                        refs.setdefault(value, set()).add(int(version) if version is not None else None)
            if not refs:
                return []
            by_type = [await compile_search(db[CURRENT], Search(t, where)) for t, where in targets.items()]
            flt = {"_id": {"$in": sorted(refs)}, "$or": by_type}
            current = await db[CURRENT].find(flt, {"_id": 1, "v": 1}).to_list(None)
            keys = sorted({f"{c['_id']}/{c['v'] if n is None else n}" for c in current for n in refs[c["_id"]]})
            if not keys:
                return []
            docs = await db[VERSIONS].find({"_id": {"$in": keys}}, _VERSION_FIELDS).to_list(None)
            return [_to_version(doc) for doc in docs]

    async def revinclude(self, refs: Sequence[str], source: Search, param: str) -> list[ResourceVersion]:
        if not refs:
            return []
        db = self._database
        with _unavailable():
            flt = await compile_search(db[CURRENT], source)
            flt["$and"].append({"idx": {"$elemMatch": {"p": param, "v": {"$in": list(refs)}}}})
            return await self._current_versions(flt)

    async def count(self, query: StoreQuery | Search) -> int:
        db = self._database
        with _unavailable():
            flt = await compile_search(db[CURRENT], as_search(query), None)
            return await db[CURRENT].count_documents(flt)

    async def bounded_count(self, query: StoreQuery | Search, cap: int) -> int | None:
        """``count_documents`` stopping at ``cap + 1`` matches (the server reads no further)."""
        db = self._database
        with _unavailable():
            flt = await compile_search(db[CURRENT], as_search(query), None)
            found = await db[CURRENT].count_documents(flt, limit=cap + 1)
        return found if found <= cap else None

    async def estimate(self, query: StoreQuery | Search, sample: tuple[int, str] | None = None) -> int | None:
        """SQLite's estimate (docs/search.md "Totals"): ``matches * live resources of the type / those up to
        last_id``, the matches found among the type's first resources in id order (UUIDv7 ids: creation order,
        a sample unrelated to content). Both counts read ``current_by_type`` keys only, no document: one range
        count, plus the type's size every ``SIZE_TTL`` seconds, sent concurrently. Without ``sample`` (a sorted
        search) the first ``SAMPLE`` matches in id order are read first (one find); fewer are the exact number."""
        db = self._database
        search = as_search(query)
        with _unavailable():
            if sample is None:
                ids = await _find_ids(db[CURRENT], search, SAMPLE, None)
                if len(ids) < SAMPLE:
                    return len(ids)  # every match: the exact number
                sample = (len(ids), ids[-1])
            matches, last_id = sample
            seen, size = await asyncio.gather(
                db[CURRENT].count_documents({"t": search.type, "del": False, "i": {"$lte": last_id}}),
                self._size(search.type),
            )
        return round(matches * size / seen) if seen else matches

    async def _size(self, type_: str) -> int:
        """Live resources of ``type_``, recounted after ``SIZE_TTL`` seconds: the count walks every key of the
        type, too much to repeat on each page of a large type (one collection holds every type, with deleted
        resources: ``estimated_document_count`` cannot tell)."""
        now = time.monotonic()
        found = self._sizes.get(type_)
        if found is None or now - found[0] > SIZE_TTL:
            size = await self._database[CURRENT].count_documents({"t": type_, "del": False})
            found = self._sizes[type_] = (now, size)
        return found[1]

    # -- the transactional outbox ----------------------------------------------------------------------

    async def outbox_claim(
        self, now: int, lease_until: int, limit: int, *, channels: Sequence[str] | None = None
    ) -> list[OutboxItem]:
        """One ``findAndModify`` per item: each lease is atomic, so two workers never take the same item."""
        if limit <= 0 or (channels is not None and not channels):
            return []
        outbox = self._database[OUTBOX]
        flt: dict[str, Any] = {"state": "pending", "due": {"$lte": now}}
        if channels is not None:
            flt["channel"] = {"$in": list(channels)}
        claimed: list[OutboxItem] = []
        with _unavailable():
            while len(claimed) < limit:
                doc = await outbox.find_one_and_update(
                    flt,
                    {"$set": {"due": lease_until}},
                    sort=[("due", 1), ("_id", 1)],
                    return_document=ReturnDocument.AFTER,
                )
                if doc is None:
                    break
                claimed.append(_to_item(doc))
        return claimed

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
        outbox = self._database[OUTBOX]
        with _unavailable():
            if delivered:
                await outbox.delete_one({"_id": item_id})
                return
            update: dict[str, Any] = {
                "attempts": attempts,
                "last_error": error,
                "state": "failed" if give_up else "pending",
            }
            if due is not None:
                update["due"] = due
            await outbox.update_one({"_id": item_id}, {"$set": update})

    async def outbox_items(self, state: str | None = None) -> list[OutboxItem]:
        flt = {"state": state} if state is not None else {}
        with _unavailable():
            return [_to_item(doc) async for doc in self._database[OUTBOX].find(flt).sort([("due", 1), ("_id", 1)])]

    # -- writes --------------------------------------------------------------------------------------

    async def transact(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        db = self._database
        assert self._client is not None
        client = self._client
        options = {
            "read_concern": ReadConcern("majority"),
            "write_concern": WriteConcern(w=self._w),
            "read_preference": ReadPreference.PRIMARY,
        }
        started = time.monotonic()
        attempt = 0
        try:
            # One session for every attempt, as ``with_transaction``: each attempt is a new transaction
            # number on it, which makes the server abort whatever an earlier attempt left open there.
            async with client.start_session() as session:
                while True:
                    attempt += 1
                    await session.start_transaction(**options)
                    try:
                        result = await work(MongoTransaction(db, session))
                    except BaseException as exc:
                        if session.in_transaction:
                            await session.abort_transaction()  # errors ignored by pymongo
                        if isinstance(exc, PyMongoError) and _retry(exc, attempt, started):
                            await _backoff(attempt)
                            continue
                        raise
                    try:
                        await _commit(session, started)
                    except PyMongoError as exc:
                        if _retry(exc, attempt, started):
                            await _backoff(attempt)
                            continue
                        raise
                    return result
        except PyMongoError as exc:
            if _is_write_conflict(exc):
                raise VersionConflict(f"write conflict persisted after {attempt} attempts") from exc
            if _is_unknown_commit(exc):
                raise StoreUnavailable(f"MongoDB commit outcome unknown after retries: {exc}") from exc
            raise StoreUnavailable(f"MongoDB transaction failed: {exc}") from exc


def _retry(exc: PyMongoError, attempt: int, started: float) -> bool:
    """Run the whole transaction again?"""
    return _is_transient(exc) and attempt < MAX_TRANSACTION_ATTEMPTS and time.monotonic() - started < RETRY_SECONDS


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.random() * min(_BACKOFF_INITIAL * 2**attempt, _BACKOFF_MAX))


async def _commit(session: AsyncClientSession, started: float) -> None:
    """Commit, sending ``commitTransaction`` again while its outcome is unknown (it is idempotent)."""
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        try:
            await session.commit_transaction()
            return
        except PyMongoError as exc:
            if _is_unknown_commit(exc) and attempt < MAX_COMMIT_ATTEMPTS and time.monotonic() - started < RETRY_SECONDS:
                continue
            raise

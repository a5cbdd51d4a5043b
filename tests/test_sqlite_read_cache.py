"""The SQLite store's cache of current versions is exact: a commit by any connection (this process's
writer, another worker process, the bulk loader) is seen by the next read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fhir_server.search.indexing import IndexEntry
from fhir_server.store import ResourceVersion
from fhir_server.store.query import AnyOf, Chain, Entry, Has, IdIn, Not, Search, types_read
from fhir_server.store.read_cache import ReadCache
from fhir_server.store.sqlite import SQLiteStore


def version(id_: str, n: int, body: bytes | None = b'{"resourceType":"Patient"}') -> ResourceVersion:
    return ResourceVersion("Patient", id_, n, 1_700_000_000_000_000 + n, "PUT", body)


async def put(store: SQLiteStore, v: ResourceVersion) -> None:
    async def work(tx):
        await tx.put(v, ())

    await store.transact(work)


async def test_writes_of_other_connections_are_seen(tmp_path: Path):
    path = str(tmp_path / "c.db")
    reader, other = SQLiteStore(path, read_cache_entries=100), SQLiteStore(path)  # two "processes"
    await reader.start()
    await other.start()
    try:
        await put(reader, version("p", 1))
        assert (await reader.read_current("Patient", "p")).version == 1
        assert (await reader.read_current("Patient", "p")).version == 1  # served from the cache
        assert len(reader._cache) == 1
        await put(other, version("p", 2))  # another connection commits
        assert (await reader.read_current("Patient", "p")).version == 2
        await put(reader, version("p", 3))  # this store's own writer
        assert (await reader.read_current("Patient", "p")).version == 3
        await put(other, version("p", 4, body=None))  # deleted elsewhere
        assert (await reader.read_current("Patient", "p")).deleted
        assert await reader.read_current("Patient", "absent") is None
    finally:
        await reader.close()
        await other.close()


def test_cache_is_bounded_by_entries_and_bytes():
    cache = ReadCache(max_entries=3, max_bytes=16 * 100)
    for i in range(5):
        cache.put(("Patient", str(i)), version(str(i), 1, b"x" * 10))
    assert len(cache) == 3  # the least recently used went first
    assert [k[1] for k in cache._entries] == ["2", "3", "4"]
    cache.put(("Patient", "big"), version("big", 1, b"x" * 200))  # over max_bytes / 16: never cached
    assert ("Patient", "big") not in cache._entries
    cache.put(("Patient", "mid"), version("mid", 1, b"x" * 90))
    cache.put(("Patient", "mid2"), version("mid2", 1, b"x" * 90))
    assert cache._bytes <= 16 * 100 and len(cache) <= 3


def other_type(id_: str, n: int, type_: str = "AuditEvent") -> ResourceVersion:
    return ResourceVersion(type_, id_, n, 1_700_000_000_000_000 + n, "PUT", b'{"resourceType":"%s"}' % type_.encode())


@pytest.fixture
async def two_stores(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    """Two stores on one file, as two worker processes: the first caches its reads."""
    path = str(tmp_path / "c.db")
    reader, other = SQLiteStore(path, read_cache_entries=100), SQLiteStore(path)
    await reader.start()
    await other.start()
    try:
        yield reader, other
    finally:
        await reader.close()
        await other.close()


async def test_commits_to_other_types_keep_the_entries(two_stores):
    """The audit trail's commits (AuditEvents) do not empty the cache of the documents and patients read."""
    reader, other = two_stores
    await put(reader, version("p", 1))
    await reader.read_current("Patient", "p")
    await put(other, other_type("a", 1))  # another type, another connection
    await put(reader, other_type("b", 1))
    assert ("Patient", "p") in reader._cache._entries
    assert (await reader.read_current("Patient", "p")).version == 1
    await put(other, version("q", 1))  # a commit to the type drops its entries, whichever resource
    await reader.read_current("AuditEvent", "a")
    assert ("Patient", "p") not in reader._cache._entries
    assert ("AuditEvent", "a") in reader._cache._entries


def _visible_if_no_block(id_: str) -> Search:
    """A policy-like check of one Patient id: no Consent of theirs has provision-type deny."""
    block = Search("Consent", (Entry("provision-type", value="deny"),))
    return Search("Patient", (IdIn((id_,)), Not(Has("patient", block))))


async def put_entries(store: SQLiteStore, v: ResourceVersion, entries) -> None:
    async def work(tx):
        await tx.put(v, entries)

    await store.transact(work)


async def test_visibility_verdicts_follow_every_type_their_conditions_read(two_stores):
    reader, other = two_stores
    await put(other, version("p", 1))
    assert await reader.find_ids(_visible_if_no_block("p"), 1) == ["p"]
    assert len(reader._cache._verdicts) == 1
    await put(other, other_type("a", 1))  # an AuditEvent: the verdict stays
    assert await reader.find_ids(_visible_if_no_block("p"), 1) == ["p"]
    assert len(reader._cache._verdicts) == 1
    # the patient blocks (a Consent written by another process): the next check sees it
    deny = [
        IndexEntry("provision-type", "deny", None, None, None),
        IndexEntry("patient", "Patient/p", None, None, None),
    ]
    await put_entries(other, other_type("c", 1, "Consent"), deny)
    assert await reader.find_ids(_visible_if_no_block("p"), 1) == []
    await put_entries(reader, other_type("c", 2, "Consent"), [])  # lifted, by this store's own writer
    assert await reader.find_ids(_visible_if_no_block("p"), 1) == ["p"]
    await other.purge("Patient", ["p"])  # gone: not visible
    assert await reader.find_ids(_visible_if_no_block("p"), 1) == []


def test_types_read_names_chain_targets_and_has_sources():
    search = Search(
        "DocumentReference",
        (AnyOf((Chain("subject", Search("Patient", (Not(Has("patient", Search("Consent"))),))), Entry("x"))),),
    )
    assert types_read(search) == {"DocumentReference", "Patient", "Consent"}

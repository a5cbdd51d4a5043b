"""The SQLite store's cache of current versions is exact: a commit by any connection (this process's
writer, another worker process, the bulk loader) is seen by the next read."""

from __future__ import annotations

from pathlib import Path

from fhir_server.store import ResourceVersion
from fhir_server.store.read_cache import CurrentVersionCache
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
    cache = CurrentVersionCache(max_entries=3, max_bytes=16 * 100)
    for i in range(5):
        cache.put(("Patient", str(i)), version(str(i), 1, b"x" * 10))
    assert len(cache) == 3  # the least recently used went first
    assert [k[1] for k in cache._entries] == ["2", "3", "4"]
    cache.put(("Patient", "big"), version("big", 1, b"x" * 200))  # over max_bytes / 16: never cached
    assert ("Patient", "big") not in cache._entries
    cache.put(("Patient", "mid"), version("mid", 1, b"x" * 90))
    cache.put(("Patient", "mid2"), version("mid2", 1, b"x" * 90))
    assert cache._bytes <= 16 * 100 and len(cache) <= 3

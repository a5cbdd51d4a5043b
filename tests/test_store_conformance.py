"""One conformance suite for every Store backend (the ``store`` fixture runs each test on SQLite and MongoDB).

Only the Store API is used: versions and index entries are built by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from fhir_server.store import (
    HistoryQuery,
    IndexEntry,
    ResourceVersion,
    Store,
    StoreQuery,
    TokenMatch,
    Transaction,
    VersionConflict,
    open_store,
)

T0 = 1_700_000_000_000_000  # µs since the epoch (2023-11-14)


def body(type_: str, id_: str, extra: str = "") -> bytes:
    return f'{{"resourceType":"{type_}","id":"{id_}"{extra}}}'.encode()


def version(type_: str, id_: str, v: int, lu: int, *, deleted: bool = False, extra: str = "") -> ResourceVersion:
    if deleted:
        return ResourceVersion(type_, id_, v, lu, "DELETE", None)
    return ResourceVersion(type_, id_, v, lu, "POST" if v == 1 else "PUT", body(type_, id_, extra))


async def put(store: Store, rv: ResourceVersion, entries: Sequence[IndexEntry] = ()) -> None:
    async def work(tx: Transaction) -> None:
        await tx.put(rv, entries)

    await store.transact(work)


def key(rv: ResourceVersion) -> tuple[int, str, str, int]:
    return (rv.last_updated, rv.type, rv.id, rv.version)


def tok(param: str, code: str, system: str | None = None) -> TokenMatch:
    return TokenMatch(param, code, system)


# -- reads and writes of one resource ---------------------------------------------------------------


async def test_missing_resource(store: Store) -> None:
    assert await store.read_current("Patient", "nope") is None
    assert await store.read_version("Patient", "nope", 1) is None
    assert await store.history(HistoryQuery()) == []
    assert await store.count_history(HistoryQuery()) == 0
    assert await store.find_ids(StoreQuery("Patient"), 10) == []


async def test_put_then_read_is_byte_identical(store: Store) -> None:
    # Decimal precision and non-ASCII text must survive untouched.
    raw = '{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50},"note":"é ☃"}'.encode()
    rv = ResourceVersion("Observation", "o1", 1, T0, "POST", raw)
    await put(store, rv, [IndexEntry("value-quantity", None, "http://unitsofmeasure.org", 1.495, 1.505)])

    current = await store.read_current("Observation", "o1")
    assert current == rv
    assert current is not None and type(current.body) is bytes and current.body == raw
    assert not current.deleted
    assert await store.read_version("Observation", "o1", 1) == rv
    assert await store.read_version("Observation", "o1", 2) is None
    assert await store.read_current("Patient", "o1") is None  # the type is part of the key


async def test_put_wrong_version_conflicts_and_writes_nothing(store: Store) -> None:
    with pytest.raises(VersionConflict):
        await put(store, version("Patient", "p1", 2, T0))
    assert await store.read_current("Patient", "p1") is None
    assert await store.count_history(HistoryQuery()) == 0

    v1 = version("Patient", "p1", 1, T0)
    await put(store, v1, [IndexEntry("name", "ann")])
    for wrong in (1, 3):
        with pytest.raises(VersionConflict):
            await put(store, version("Patient", "p1", wrong, T0 + 10, extra=',"x":1'), [IndexEntry("name", "bob")])
    assert await store.read_current("Patient", "p1") == v1
    assert await store.history(HistoryQuery()) == [v1]
    assert await store.find_ids(StoreQuery("Patient", all_of=((tok("name", "ann"),),)), 10) == ["p1"]
    assert await store.find_ids(StoreQuery("Patient", all_of=((tok("name", "bob"),),)), 10) == []


async def test_update_supersedes(store: Store) -> None:
    v1 = version("Patient", "p1", 1, T0)
    v2 = version("Patient", "p1", 2, T0 + 5, extra=',"active":true')
    await put(store, v1, [IndexEntry("name", "old")])
    await put(store, v2, [IndexEntry("name", "new")])

    assert await store.read_current("Patient", "p1") == v2
    assert await store.read_version("Patient", "p1", 1) == v1
    assert await store.read_version("Patient", "p1", 2) == v2
    assert await store.history(HistoryQuery("Patient", "p1")) == [v2, v1]
    # Only the current version is indexed.
    assert await store.find_ids(StoreQuery("Patient", all_of=((tok("name", "old"),),)), 10) == []
    assert await store.find_ids(StoreQuery("Patient", all_of=((tok("name", "new"),),)), 10) == ["p1"]


async def test_delete_then_recreate(store: Store) -> None:
    v1 = version("Patient", "p1", 1, T0)
    await put(store, v1, [IndexEntry("name", "ann")])
    gone = version("Patient", "p1", 2, T0 + 1, deleted=True)
    await put(store, gone, [IndexEntry("name", "ann")])  # entries of a deletion are ignored

    current = await store.read_current("Patient", "p1")
    assert current == gone and current is not None and current.deleted and current.method == "DELETE"
    assert await store.find_ids(StoreQuery("Patient", all_of=((tok("name", "ann"),),)), 10) == []
    assert await store.find_ids(StoreQuery("Patient"), 10) == []
    assert await store.find_ids(StoreQuery("Patient", ids=("p1",)), 10) == []
    assert await store.history(HistoryQuery("Patient", "p1")) == [gone, v1]
    assert await store.read_version("Patient", "p1", 1) == v1

    with pytest.raises(VersionConflict):
        await put(store, version("Patient", "p1", 1, T0 + 2))
    v3 = version("Patient", "p1", 3, T0 + 2)
    await put(store, v3, [IndexEntry("name", "ann")])
    assert await store.read_current("Patient", "p1") == v3
    assert await store.find_ids(StoreQuery("Patient", all_of=((tok("name", "ann"),),)), 10) == ["p1"]
    assert await store.count_history(HistoryQuery("Patient", "p1")) == 3


async def test_deleting_a_resource_that_never_existed(store: Store) -> None:
    gone = version("Patient", "ghost", 1, T0, deleted=True)
    await put(store, gone)
    assert await store.read_current("Patient", "ghost") == gone
    assert await store.find_ids(StoreQuery("Patient"), 10) == []


async def test_restart_keeps_data(store: Store, store_url: str) -> None:
    v1 = version("Patient", "p1", 1, T0)
    await put(store, v1, [IndexEntry("name", "ann")])
    await store.start()  # idempotent
    again = open_store(store_url)
    async with again:  # a second store on the same database: schema/index creation is idempotent
        assert await again.read_current("Patient", "p1") == v1
        assert await again.find_ids(StoreQuery("Patient", all_of=((tok("name", "ann"),),)), 10) == ["p1"]


# -- history ----------------------------------------------------------------------------------------

# Seven versions; equal timestamps across resources and types exercise the tie-breaking order.
A1 = version("Patient", "a", 1, T0 + 100)
B1 = version("Patient", "b", 1, T0 + 100)
O1 = version("Observation", "o1", 1, T0 + 100)
A2 = version("Patient", "a", 2, T0 + 200, extra=',"active":true')
A3 = version("Patient", "a", 3, T0 + 300, deleted=True)
O2 = version("Observation", "o1", 2, T0 + 300, extra=',"status":"final"')
C1 = version("Patient", "c", 1, T0 + 400)
HISTORY = [A1, B1, O1, A2, A3, O2, C1]
# Newest first: last_updated desc, then type, id, version desc.
SYSTEM_ORDER = [C1, A3, O2, A2, B1, A1, O1]


async def history_store(store: Store) -> Store:
    for rv in HISTORY:
        await put(store, rv)
    return store


async def page_through(store: Store, query: HistoryQuery, limit: int) -> list[ResourceVersion]:
    """All entries of ``query``, fetched ``limit`` at a time with the ``before`` cursor."""
    seen: list[ResourceVersion] = []
    before = None
    for _ in range(100):
        page = await store.history(
            HistoryQuery(query.type, query.id, query.since, query.at_low, query.at_high, before, limit)
        )
        assert len(page) <= limit
        seen.extend(page)
        if len(page) < limit:
            return seen
        before = key(page[-1])
    raise AssertionError("paging does not end")


async def test_history_system_level_order(store: Store) -> None:
    await history_store(store)
    assert sorted(HISTORY, key=key, reverse=True) == SYSTEM_ORDER
    assert await store.history(HistoryQuery()) == SYSTEM_ORDER
    assert await store.history(HistoryQuery(limit=2)) == SYSTEM_ORDER[:2]
    assert await store.count_history(HistoryQuery()) == 7


async def test_history_type_and_instance_levels(store: Store) -> None:
    await history_store(store)
    assert await store.history(HistoryQuery("Patient")) == [C1, A3, A2, B1, A1]
    assert await store.history(HistoryQuery("Observation")) == [O2, O1]
    assert await store.history(HistoryQuery("Patient", "a")) == [A3, A2, A1]
    assert await store.history(HistoryQuery("Observation", "a")) == []
    assert await store.history(HistoryQuery("Encounter")) == []
    assert await store.count_history(HistoryQuery("Patient")) == 5
    assert await store.count_history(HistoryQuery("Patient", "a")) == 3


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 8])
async def test_history_paging_has_no_gaps_or_duplicates(store: Store, limit: int) -> None:
    await history_store(store)
    assert await page_through(store, HistoryQuery(), limit) == SYSTEM_ORDER
    assert await page_through(store, HistoryQuery("Patient"), limit) == [C1, A3, A2, B1, A1]
    assert await page_through(store, HistoryQuery("Patient", "a"), limit) == [A3, A2, A1]


async def test_history_pages_of_three(store: Store) -> None:
    await history_store(store)
    page1 = await store.history(HistoryQuery(limit=3))
    page2 = await store.history(HistoryQuery(before=key(page1[-1]), limit=3))
    page3 = await store.history(HistoryQuery(before=key(page2[-1]), limit=3))
    assert (page1, page2, page3) == (SYSTEM_ORDER[:3], SYSTEM_ORDER[3:6], SYSTEM_ORDER[6:])
    # The cursor is strict: its own entry is never repeated, even among equal timestamps.
    assert await store.history(HistoryQuery(before=key(B1))) == [A1, O1]
    assert await store.history(HistoryQuery(before=key(O1))) == []


async def test_history_since(store: Store) -> None:
    await history_store(store)
    assert await store.history(HistoryQuery(since=T0 + 300)) == [C1, A3, O2]  # inclusive
    assert await store.history(HistoryQuery("Patient", since=T0 + 201)) == [C1, A3]
    assert await store.history(HistoryQuery(since=T0 + 401)) == []
    assert await store.count_history(HistoryQuery(since=T0 + 300)) == 3
    assert await page_through(store, HistoryQuery(since=T0 + 200), 2) == [C1, A3, O2, A2]


@pytest.mark.parametrize(
    ("at_low", "at_high", "expected"),
    [
        # a: v1 [100,200) v2 [200,300) v3 (deleted) [300,∞); b [100,∞); o1: v1 [100,300) v2 [300,∞); c [400,∞)
        (250, 260, [A2, B1, O1]),
        (200, 201, [A2, B1, O1]),  # a v1 ended at 200: not current at 200
        (199, 200, [B1, A1, O1]),  # a v2 started at 200: not yet current before 200
        (300, 301, [A3, O2, B1]),
        (0, 100, []),
        (0, 10_000, SYSTEM_ORDER),
        (500, 600, [C1, A3, O2, B1]),
    ],
)
async def test_history_at_window(store: Store, at_low: int, at_high: int, expected: list) -> None:
    await history_store(store)
    query = HistoryQuery(at_low=T0 + at_low, at_high=T0 + at_high)
    assert await store.history(query) == expected
    assert await store.count_history(query) == len(expected)
    assert await page_through(store, query, 2) == expected
    patients = HistoryQuery("Patient", at_low=T0 + at_low, at_high=T0 + at_high)
    assert await store.history(patients) == [rv for rv in expected if rv.type == "Patient"]


async def test_history_open_ended_windows(store: Store) -> None:
    await history_store(store)
    # Only an upper bound: every version that started before it.
    assert await store.history(HistoryQuery(at_high=T0 + 150)) == [B1, A1, O1]
    # Only a lower bound: every version still current after it.
    assert await store.history(HistoryQuery(at_low=T0 + 350)) == [C1, A3, O2, B1]


async def test_count_history_matches_history(store: Store) -> None:
    await history_store(store)
    queries = [
        HistoryQuery(),
        HistoryQuery("Patient"),
        HistoryQuery("Patient", "a"),
        HistoryQuery(since=T0 + 200),
        HistoryQuery("Observation", since=T0 + 100),
        HistoryQuery(at_low=T0 + 250, at_high=T0 + 260),
        HistoryQuery("Patient", "a", at_low=T0, at_high=T0 + 10_000),
    ]
    for query in queries:
        full = await store.history(
            HistoryQuery(query.type, query.id, query.since, query.at_low, query.at_high, limit=1000)
        )
        assert await store.count_history(query) == len(full), query


# -- find_ids ---------------------------------------------------------------------------------------


async def search_store(store: Store) -> Store:
    resources = {
        # Inserted out of id order on purpose.
        "p3": [IndexEntry("identifier", "A"), IndexEntry("gender", "male")],
        "p1": [
            IndexEntry("identifier", "A", "urn:sys1"),
            IndexEntry("gender", "male"),
            IndexEntry("birthdate", None, None, 1.0e15, 1.1e15),
        ],
        "p2": [
            IndexEntry("identifier", "A", "urn:sys2"),
            IndexEntry("identifier", "Z", "urn:sys1"),  # A and urn:sys1, but in different entries
            IndexEntry("gender", "female"),
        ],
        "p4": [
            IndexEntry("identifier", "B", "urn:sys1"),
            IndexEntry("identifier", "C", ""),  # an empty system is not "no system"
            IndexEntry("gender", "male"),
        ],
        "p5": [IndexEntry("identifier", "A", "urn:sys1"), IndexEntry("gender", "male")],
    }
    for id_, entries in resources.items():
        await put(store, version("Patient", id_, 1, T0), entries)
    await put(store, version("Patient", "p5", 2, T0 + 1, deleted=True))
    await put(store, version("Observation", "o1", 1, T0), [IndexEntry("identifier", "A", "urn:sys1")])
    return store


def q(*groups: tuple[TokenMatch, ...], ids: tuple[str, ...] | None = None) -> StoreQuery:
    return StoreQuery("Patient", ids=ids, all_of=tuple(groups))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (q(), ["p1", "p2", "p3", "p4"]),
        (q((tok("identifier", "A"),)), ["p1", "p2", "p3"]),  # any system
        (q((tok("identifier", "A", "urn:sys1"),)), ["p1"]),  # same entry for code and system
        (q((tok("identifier", "A", ""),)), ["p3"]),  # no system
        (q((tok("identifier", "C"),)), ["p4"]),
        (q((tok("identifier", "C", ""),)), []),
        (q((tok("identifier", "C", "urn:sys1"),)), []),
        (q((tok("identifier", "male"),)), []),  # same entry for param and value
        (q((tok("identifier", "a"),)), []),  # case-sensitive
        (q((tok("identifier", "A", "urn:sys1"), tok("identifier", "A", "urn:sys2"))), ["p1", "p2"]),
        (q((tok("identifier", "A"),), (tok("gender", "male"),)), ["p1", "p3"]),
        (
            q(
                (tok("identifier", "A", "urn:sys1"), tok("identifier", "B", "urn:sys1")),
                (tok("gender", "male"), tok("gender", "other")),
            ),
            ["p1", "p4"],
        ),
        (q((tok("identifier", "A"),), (tok("gender", "female"),), (tok("identifier", "Z"),)), ["p2"]),
        (q((tok("identifier", "A"),), (tok("gender", "unknown"),)), []),
        (q((tok("nothing", "A"),)), []),
        (q(ids=("p3", "p1", "p5", "nope")), ["p1", "p3"]),  # deleted p5 excluded
        (q((tok("gender", "male"),), ids=("p1", "p2", "p3")), ["p1", "p3"]),
        (q(ids=()), []),
        (q(()), []),  # an empty disjunction matches nothing
    ],
)
async def test_find_ids(store: Store, query: StoreQuery, expected: list[str]) -> None:
    await search_store(store)
    assert await store.find_ids(query, 100) == expected


async def test_find_ids_limit_and_type(store: Store) -> None:
    await search_store(store)
    assert await store.find_ids(q(), 2) == ["p1", "p2"]
    assert await store.find_ids(q((tok("gender", "male"),)), 1) == ["p1"]
    assert await store.find_ids(q(), 0) == []
    assert await store.find_ids(StoreQuery("Observation", all_of=((tok("identifier", "A"),),)), 10) == ["o1"]
    assert await store.find_ids(StoreQuery("Encounter"), 10) == []


# -- transactions -----------------------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_transact_returns_the_work_result(store: Store) -> None:
    async def work(tx: Transaction) -> str:
        await tx.put(version("Patient", "p1", 1, T0), [IndexEntry("name", "ann")])
        return "done"

    assert await store.transact(work) == "done"
    assert await store.read_current("Patient", "p1") == version("Patient", "p1", 1, T0)


async def test_transact_is_all_or_nothing(store: Store) -> None:
    await put(store, version("Patient", "kept", 1, T0), [IndexEntry("name", "kept")])
    error = Boom("stop")

    async def work(tx: Transaction) -> None:
        await tx.put(version("Patient", "x", 1, T0 + 1), [IndexEntry("name", "x")])
        await tx.put(version("Patient", "kept", 2, T0 + 1, deleted=True), [])
        await tx.put(version("Observation", "y", 1, T0 + 1), [IndexEntry("name", "y")])
        raise error

    with pytest.raises(Boom) as excinfo:
        await store.transact(work)
    assert excinfo.value is error  # propagated unchanged

    assert await store.read_current("Patient", "x") is None
    assert await store.read_current("Observation", "y") is None
    assert await store.read_current("Patient", "kept") == version("Patient", "kept", 1, T0)
    assert await store.read_version("Patient", "kept", 2) is None
    assert await store.history(HistoryQuery()) == [version("Patient", "kept", 1, T0)]
    assert await store.find_ids(q((tok("name", "x"),)), 10) == []
    assert await store.find_ids(StoreQuery("Observation", all_of=((tok("name", "y"),),)), 10) == []
    assert await store.find_ids(q((tok("name", "kept"),)), 10) == ["kept"]
    # The kept version is still current over an open-ended window (its superseded mark was rolled back).
    assert await store.history(HistoryQuery(at_low=T0 + 10, at_high=T0 + 20)) == [version("Patient", "kept", 1, T0)]


async def test_transaction_sees_its_own_writes(store: Store) -> None:
    async def work(tx: Transaction) -> tuple:
        before = await tx.read_current("Patient", "p1")
        await tx.put(version("Patient", "p1", 1, T0), [IndexEntry("name", "ann")])
        await tx.put(version("Patient", "p1", 2, T0 + 1), [IndexEntry("name", "bob")])
        return (
            before,
            await tx.read_current("Patient", "p1"),
            await tx.find_ids(q((tok("name", "bob"),)), 10),
            await tx.find_ids(q((tok("name", "ann"),)), 10),
        )

    before, after, bob, ann = await store.transact(work)
    assert (before, after, bob, ann) == (None, version("Patient", "p1", 2, T0 + 1), ["p1"], [])
    assert await store.history(HistoryQuery(at_low=T0 + 5, at_high=T0 + 6)) == [version("Patient", "p1", 2, T0 + 1)]


async def test_same_version_twice_in_one_transaction_rolls_back(store: Store) -> None:
    async def work(tx: Transaction) -> None:
        await tx.put(version("Patient", "other", 1, T0), [IndexEntry("name", "other")])
        await tx.put(version("Patient", "p1", 1, T0), [IndexEntry("name", "ann")])
        await tx.put(version("Patient", "p1", 1, T0 + 1, extra=',"x":2'), [IndexEntry("name", "ann")])

    with pytest.raises(VersionConflict):
        await store.transact(work)
    assert await store.read_current("Patient", "p1") is None
    assert await store.read_current("Patient", "other") is None
    assert await store.count_history(HistoryQuery()) == 0
    assert await store.find_ids(q(), 10) == []


async def test_concurrent_transactions_all_land(store: Store) -> None:
    ids = [f"c{n}" for n in range(10)]
    await asyncio.gather(
        *(put(store, version("Patient", i, 1, T0 + n), [IndexEntry("name", i)]) for n, i in enumerate(ids))
    )
    for n, i in enumerate(ids):
        assert await store.read_current("Patient", i) == version("Patient", i, 1, T0 + n)
    assert await store.find_ids(q(), 100) == sorted(ids)
    assert await store.count_history(HistoryQuery("Patient")) == 10


async def test_concurrent_read_modify_write_of_one_resource(store: Store) -> None:
    """Transactions that read then update the same resource serialize (retried on conflict)."""
    await put(store, version("Patient", "p1", 1, T0))

    async def bump(tx: Transaction) -> int:
        current = await tx.read_current("Patient", "p1")
        assert current is not None
        new = version("Patient", "p1", current.version + 1, current.last_updated + 1)
        await tx.put(new, [IndexEntry("n", str(new.version))])
        return new.version

    results = await asyncio.gather(*(store.transact(bump) for _ in range(3)), return_exceptions=True)
    landed = sorted(r for r in results if isinstance(r, int))
    # Every bump either landed (with a distinct version) or was refused as a conflict: never lost.
    assert all(isinstance(r, int | VersionConflict) for r in results), results
    assert landed == list(range(2, 2 + len(landed)))
    final = await store.read_current("Patient", "p1")
    assert final is not None and final.version == 1 + len(landed)
    assert await store.count_history(HistoryQuery("Patient", "p1")) == 1 + len(landed)
    assert await store.find_ids(q((tok("n", str(final.version)),)), 10) == ["p1"]


async def test_a_failing_unit_among_concurrent_ones_fails_alone(store: Store) -> None:
    """Units of work that run together (SQLite commits them as a group) stay independent."""

    class Refused(Exception):
        pass

    async def failing(tx: Transaction) -> None:
        await tx.put(version("Patient", "bad", 1, T0), [IndexEntry("name", "bad")])
        raise Refused

    results = await asyncio.gather(
        put(store, version("Patient", "a", 1, T0)),
        store.transact(failing),
        put(store, version("Patient", "b", 1, T0)),
        return_exceptions=True,
    )
    assert isinstance(results[1], Refused)
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert await store.read_current("Patient", "bad") is None
    assert await store.find_ids(q(), 10) == ["a", "b"]
    assert await store.count_history(HistoryQuery("Patient")) == 2

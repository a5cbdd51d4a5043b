"""MongoDB only: how the store runs its transactions against a server that behaves like ``mongod``.

* retries: ``failCommand`` fail points (``configureFailPoint``, a test command: enabled on the SecantusDB
  the fixtures start; against ``FHIR_SERVER_TEST_MONGODB_URI`` these tests skip when the server refuses
  it) make one attempt fail; the store runs it again — exactly once more, no duplicate version — or
  surfaces the error;
* write conflicts are detected at write time and only between transactions writing the same document;
* MongoDB's 16 MiB document limit is a 413 OperationOutcome, not a server error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import fhir_client
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from fhir_server.store import (
    HistoryQuery,
    IndexEntry,
    ResourceVersion,
    Store,
    StoreUnavailable,
    Transaction,
    VersionConflict,
    open_store,
)
from fhir_server.store import mongo as mongo_module
from fhir_server.store.mongo import ResourceTooLarge

pytestmark = pytest.mark.mongo

T0 = 1_700_000_000_000_000
APP_NAME = "fhir-server"  # the store's client: fail points scoped to it leave the test's own client alone
MIB = 1024 * 1024


def version(id_: str, v: int, body_bytes: int = 0) -> ResourceVersion:
    padding = f',"p":"{"x" * body_bytes}"' if body_bytes else ""
    return ResourceVersion(
        "Patient", id_, v, T0 + v, "POST" if v == 1 else "PUT", f'{{"id":"{id_}"{padding}}}'.encode()
    )


class Counted:
    """A unit of work writing ``rv``, counting how often the store ran it."""

    def __init__(self, rv: ResourceVersion, entries: list[IndexEntry] | None = None) -> None:
        self.rv, self.entries, self.calls = rv, entries or [IndexEntry("name", rv.id)], 0

    async def __call__(self, tx: Transaction) -> int:
        self.calls += 1
        await tx.put(self.rv, self.entries)
        return self.rv.version


@pytest.fixture
async def mongo_store(mongo_url: str) -> AsyncIterator[Store]:
    s = open_store(mongo_url)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def admin(mongo_uri: str) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def fail_point(admin: MongoClient, data: dict[str, Any], times: int = 1) -> Iterator[None]:
    """A ``failCommand`` fail point on the store's connections for the next ``times`` matching commands."""
    try:
        admin.admin.command(
            "configureFailPoint", "failCommand", mode={"times": times}, data={**data, "appName": APP_NAME}
        )
    except OperationFailure as exc:
        if not os.environ.get("FHIR_SERVER_TEST_MONGODB_URI"):
            raise  # the fixtures start SecantusDB with test commands enabled: this must work
        pytest.skip(f"the MongoDB server refuses configureFailPoint (test commands not enabled): {exc}")
    try:
        yield
    finally:
        admin.admin.command("configureFailPoint", "failCommand", mode="off")


async def assert_only(mongo_store: Store, id_: str, *versions: int) -> None:
    """``id_`` has exactly these versions, the last one current."""
    history = await mongo_store.history(HistoryQuery("Patient", id_))
    assert sorted(v.version for v in history) == list(versions)
    current = await mongo_store.read_current("Patient", id_)
    assert (current.version if current else None) == (versions[-1] if versions else None)


# -- retries ------------------------------------------------------------------------------------------


async def test_a_transient_commit_error_reruns_the_transaction_once(mongo_store: Store, admin: MongoClient) -> None:
    work = Counted(version("p1", 1))
    fails = {"failCommands": ["commitTransaction"], "errorCode": 251, "errorLabels": ["TransientTransactionError"]}
    with fail_point(admin, fails):
        assert await mongo_store.transact(work) == 1
    assert work.calls == 2
    await assert_only(mongo_store, "p1", 1)
    # The failed attempt's transaction (left open by the fail point) is gone: the next write is not in conflict.
    update = Counted(version("p1", 2))
    await mongo_store.transact(update)
    assert update.calls == 1
    await assert_only(mongo_store, "p1", 1, 2)


@pytest.mark.parametrize(
    "labels",
    [pytest.param(None, id="labelled-by-the-server"), pytest.param([], id="bare-code-112")],
)
async def test_a_write_conflict_reruns_the_transaction_once(
    mongo_store: Store, admin: MongoClient, labels: list[str] | None
) -> None:
    await mongo_store.transact(Counted(version("p1", 1)))
    work = Counted(version("p1", 2))
    fails: dict[str, Any] = {"failCommands": ["insert"], "errorCode": 112}
    if labels is not None:
        fails["errorLabels"] = labels
    with fail_point(admin, fails):
        assert await mongo_store.transact(work) == 2
    assert work.calls == 2
    await assert_only(mongo_store, "p1", 1, 2)


@pytest.mark.parametrize(
    "fails",
    [
        pytest.param(
            {
                "failCommands": ["commitTransaction"],
                "writeConcernError": {
                    "code": 64,
                    "codeName": "WriteConcernFailed",
                    "errmsg": "waiting for replication timed out",
                    "errInfo": {"wtimeout": True},
                },
            },
            id="committed-but-write-concern-timed-out",
        ),
        pytest.param({"failCommands": ["commitTransaction"], "errorCode": 64}, id="not-committed"),
    ],
)
async def test_an_unknown_commit_result_resends_the_commit_only(
    mongo_store: Store, admin: MongoClient, fails: dict[str, Any]
) -> None:
    work = Counted(version("p1", 1))
    with fail_point(admin, fails):
        assert await mongo_store.transact(work) == 1
    assert work.calls == 1  # the commit was sent again, the work not run again
    await assert_only(mongo_store, "p1", 1)


async def test_a_non_transient_error_is_surfaced_at_once(mongo_store: Store, admin: MongoClient) -> None:
    work = Counted(version("p1", 1))
    with fail_point(admin, {"failCommands": ["insert"], "errorCode": 2}), pytest.raises(StoreUnavailable):
        await mongo_store.transact(work)
    assert work.calls == 1
    await assert_only(mongo_store, "p1")
    await mongo_store.transact(Counted(version("p1", 1)))  # the store is fine afterwards
    await assert_only(mongo_store, "p1", 1)


async def test_a_persistent_write_conflict_is_a_version_conflict(
    mongo_store: Store, admin: MongoClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_module, "MAX_TRANSACTION_ATTEMPTS", 3)
    work = Counted(version("p1", 1))
    with fail_point(admin, {"failCommands": ["insert"], "errorCode": 112}, times=3), pytest.raises(VersionConflict):
        await mongo_store.transact(work)
    assert work.calls == 3
    await assert_only(mongo_store, "p1")


# -- concurrency ------------------------------------------------------------------------------------------


async def test_concurrent_writers_of_different_resources_do_not_conflict(mongo_store: Store) -> None:
    """All open at once (each waits for the others before committing): none is run twice."""
    # The database's first multikey write (index_value, index_range) is a catalog change: transactions
    # making the same index multikey at once do conflict. Past that, only same-document writes do.
    await mongo_store.transact(
        Counted(version("first", 1), [IndexEntry("name", "x"), IndexEntry("n", None, None, 1, 2)])
    )
    n = 8
    inside = 0
    all_inside = asyncio.Event()

    class Waiting(Counted):
        async def __call__(self, tx: Transaction) -> int:
            nonlocal inside
            result = await super().__call__(tx)
            inside += 1
            if inside == n:
                all_inside.set()
            await asyncio.wait_for(all_inside.wait(), 10)
            return result

    works = [Waiting(version(f"p{i}", 1)) for i in range(n)]
    results = await asyncio.gather(*(mongo_store.transact(w) for w in works), return_exceptions=True)
    assert results == [1] * n
    assert [w.calls for w in works] == [1] * n
    assert await mongo_store.count_history(HistoryQuery("Patient")) == n + 1


async def test_a_write_conflict_is_detected_at_write_time(mongo_store: Store) -> None:
    """B writes the resource A has written but not committed: B fails at once (not at commit) and, run
    again once A has committed, writes the next version."""
    await mongo_store.transact(Counted(version("p1", 1)))
    a_wrote, b_tried = asyncio.Event(), asyncio.Event()
    a_calls = b_calls = 0

    async def a(tx: Transaction) -> int:
        nonlocal a_calls
        a_calls += 1
        await tx.put(version("p1", 2), [])
        a_wrote.set()
        await asyncio.wait_for(b_tried.wait(), 10)  # commit only once B has run into A's write
        return 2

    async def b(tx: Transaction) -> int:
        nonlocal b_calls
        b_calls += 1
        current = await tx.read_current("Patient", "p1")
        assert current is not None
        try:
            await tx.put(version("p1", current.version + 1), [])
        finally:
            b_tried.set()
        return current.version + 1

    task_a = asyncio.create_task(mongo_store.transact(a))
    await asyncio.wait_for(a_wrote.wait(), 10)
    results = await asyncio.gather(task_a, mongo_store.transact(b), return_exceptions=True)
    assert results == [2, 3]
    assert a_calls == 1 and b_calls >= 2
    await assert_only(mongo_store, "p1", 1, 2, 3)


# -- the 16 MiB document limit --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body_bytes", "entries"),
    [
        pytest.param(17 * MIB, 0, id="body-refused-by-the-driver"),
        pytest.param(16 * MIB, 0, id="body-refused-by-the-server"),  # under the driver's 16 MiB + 16 KiB
        pytest.param(0, 600_000, id="index-entries"),
    ],
)
async def test_a_document_over_16_mib_is_refused(mongo_store: Store, body_bytes: int, entries: int) -> None:
    rv = version("big", 1, body_bytes)
    work = Counted(rv, [IndexEntry("name", f"n{i}") for i in range(entries)] if entries else None)
    with pytest.raises(ResourceTooLarge) as refused:
        await mongo_store.transact(work)
    assert refused.value.status == 413 and refused.value.issues[0].code == "too-long"
    assert "Patient/big" in refused.value.issues[0].diagnostics and "16 MiB" in refused.value.issues[0].diagnostics
    assert work.calls == 1
    await assert_only(mongo_store, "big")  # nothing of it was written
    await mongo_store.transact(Counted(version("big", 1)))
    await assert_only(mongo_store, "big", 1)


async def test_rest_answers_413_for_a_resource_over_16_mib(mongo_url: str) -> None:
    """A 6 MiB family name (under the 15 MiB body limit) is indexed three times (name, family, phonetic)."""
    patient = {"resourceType": "Patient", "id": "big", "name": [{"family": "a" * (6 * MIB)}]}
    async with fhir_client(mongo_url) as client:
        response = await client.put(
            "/Patient/big", content=json.dumps(patient), headers={"Content-Type": "application/fhir+json"}
        )
        assert response.status_code == 413, response.text[:500]
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "too-long"
        assert "16 MiB" in outcome["issue"][0]["diagnostics"]
        assert (await client.get("/Patient/big")).status_code == 404

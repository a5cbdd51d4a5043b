"""The transactional outbox in both stores: enqueue commits or rolls back with its unit of work, claims lease
items to one worker, settle deletes, retries or gives up (notify/outbox.py, Store.outbox_*)."""

from __future__ import annotations

import pytest

from fhir_server.notify.outbox import EMAIL, REST_HOOK, OutboxItem
from fhir_server.store import ResourceVersion, Store, open_store
from fhir_server.store.base import decode_payload, encode_payload

SECOND = 1_000_000


def hook(item_id: str, due: int = 0, **payload: object) -> OutboxItem:
    return OutboxItem(item_id, REST_HOOK, {"url": "http://127.0.0.1:9/hook", "headers": [], **payload}, due=due)


async def enqueue(store: Store, *items: OutboxItem) -> None:
    async def work(tx):
        for item in items:
            await tx.enqueue(item)

    await store.transact(work)


async def test_enqueue_commits_with_the_unit_of_work(store: Store) -> None:
    patient = ResourceVersion("Patient", "p1", 1, 1_000, "POST", b'{"resourceType":"Patient","id":"p1"}')
    item = OutboxItem("o1", EMAIL, {"to": "zoe@example.org", "subject": "Nouveau document", "text": "…"}, due=5)

    async def work(tx):
        await tx.put(patient, [])
        await tx.enqueue(item)
        return "done"

    assert await store.transact(work) == "done"
    assert await store.outbox_items() == [item]
    assert await store.outbox_items("pending") == [item]
    assert await store.outbox_items("failed") == []
    assert (await store.read_current("Patient", "p1")) == patient


async def test_a_failed_unit_leaves_no_item(store: Store) -> None:
    async def work(tx):
        await tx.enqueue(hook("o1"))
        await tx.put(ResourceVersion("Patient", "p1", 1, 1_000, "POST", b"{}"), [])
        raise RuntimeError("the write fails after the enqueue")

    with pytest.raises(RuntimeError):
        await store.transact(work)
    assert await store.outbox_items() == []
    assert await store.read_current("Patient", "p1") is None


async def test_payload_round_trip_keeps_bytes_and_unicode(store: Store) -> None:
    payload = {"url": "https://h.example/x", "headers": ["Authorization: Bearer t"], "body": b"\x00{\xff}", "n": 1.5}
    item = OutboxItem("o1", REST_HOOK, {**payload, "nested": [{"b": b"ok"}, "é"]}, due=1)
    await enqueue(store, item)
    (stored,) = await store.outbox_items()
    assert stored.payload == item.payload
    assert isinstance(stored.payload["body"], bytes)
    assert decode_payload(encode_payload({"x": "$bytes"})) == {"x": "$bytes"}


async def test_claim_leases_due_items_oldest_first(store: Store) -> None:
    await enqueue(store, hook("late", due=30), hook("first", due=10), hook("second", due=20), hook("future", due=99))
    claimed = await store.outbox_claim(now=50, lease_until=50 + 60 * SECOND, limit=10)
    assert [i.id for i in claimed] == ["first", "second", "late"]
    assert all(i.due == 50 + 60 * SECOND and i.attempts == 0 and i.state == "pending" for i in claimed)
    # leased: a second worker at the same time gets nothing, not even the not-yet-due item
    assert await store.outbox_claim(now=50, lease_until=50 + 60 * SECOND, limit=10) == []
    # the lease expires: the items are due again
    again = await store.outbox_claim(now=50 + 60 * SECOND, lease_until=200 * SECOND, limit=2)
    assert [i.id for i in again] == ["future", "first"]


async def test_claim_limit_and_channels(store: Store) -> None:
    await enqueue(store, hook("h1", due=1), hook("h2", due=2), OutboxItem("e1", EMAIL, {"to": "a@b.c"}, due=0))
    assert [i.id for i in await store.outbox_claim(10, 100, limit=1, channels=[REST_HOOK])] == ["h1"]
    assert await store.outbox_claim(10, 100, limit=0) == []
    assert await store.outbox_claim(10, 100, limit=5, channels=[]) == []
    assert [i.id for i in await store.outbox_claim(10, 100, limit=5, channels=[REST_HOOK])] == ["h2"]
    assert [i.id for i in await store.outbox_claim(10, 100, limit=5)] == ["e1"]


async def test_settle_delivered_deletes(store: Store) -> None:
    await enqueue(store, hook("o1"), hook("o2"))
    await store.outbox_claim(0, 100, 10)
    await store.outbox_settle("o1", delivered=True, attempts=1)
    assert [i.id for i in await store.outbox_items()] == ["o2"]
    await store.outbox_settle("gone", delivered=True, attempts=1)  # unknown: ignored
    await store.outbox_settle("gone", delivered=False, attempts=1, due=5, error="x")


async def test_settle_retry_then_fail(store: Store) -> None:
    await enqueue(store, hook("o1"))
    (item,) = await store.outbox_claim(0, 100, 10)
    await store.outbox_settle(item.id, delivered=False, attempts=1, due=30 * SECOND, error="HTTP 500")
    (pending,) = await store.outbox_items("pending")
    assert (pending.attempts, pending.due, pending.last_error, pending.state) == (1, 30 * SECOND, "HTTP 500", "pending")
    assert await store.outbox_claim(30 * SECOND - 1, 40 * SECOND, 10) == []
    (again,) = await store.outbox_claim(30 * SECOND, 40 * SECOND, 10)
    assert again.attempts == 1 and again.last_error == "HTTP 500"

    await store.outbox_settle(item.id, delivered=False, attempts=2, error="timeout", give_up=True)
    assert await store.outbox_items("pending") == []
    (failed,) = await store.outbox_items("failed")
    assert (failed.attempts, failed.last_error, failed.state, failed.due) == (2, "timeout", "failed", 40 * SECOND)
    assert await store.outbox_claim(10**18, 10**18, 10) == []  # a failed item is never claimed again


async def test_items_survive_a_reopening_of_the_store(store: Store, store_url: str) -> None:
    """Items are the worker's only memory: a store reopened from the same URL has them."""
    await enqueue(store, hook("o1", due=7))
    await store.outbox_claim(10, 20, 10)
    await store.close()
    reopened = open_store(store_url)
    await reopened.start()
    try:
        assert [(i.id, i.due) for i in await reopened.outbox_items()] == [("o1", 20)]
    finally:
        await reopened.close()
        await store.start()  # the fixture closes it

"""No post-filtering: a professional's reads and searches cost the store queries a ``system/`` token's do.

The access policy is conditions ANDed inside the store query (policy/rules.py), never a filter over what the
store answered: so the same request makes the same number of store calls whoever asks, only their conditions
differ; it does not grow with the number of matches, documents, Consents or rules. Counted here by wrapping
the store's read methods, on both stores, with the record and tokens of test_policy.py.

One difference is by design and pinned here: an unconfined ``system/*.rs`` read is served by the read fast
path (one ``read_current``); any confined caller (a granular ``system/`` scope, a ``patient/`` token, a
professional) also makes the one visibility query every confined read makes (``find_ids`` of that id under
the caller's conditions): the policy adds conditions to that query, not queries.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from test_access_control import token
from test_policy import LEA_DOCS, LOINC, document, policy_server, ps_token

#: Every read a Store offers (base.Store): counted whichever the interactions use.
STORE_READS = ("read_current", "read_version", "find_ids", "search_page", "count", "bounded_count", "estimate",
               "include", "revinclude", "history", "count_history")  # fmt: skip

# Minted at import: valid for the whole run however long the suite takes (they are stand-in tokens).
LONG = {"exp": int(time.time()) + 24 * 3600}
SYSTEM = token("system/*.rs", **LONG)
#: A system token confined by a granular scope: the full read route and its one visibility query.
SYSTEM_CONFINED = token(f"system/DocumentReference.rs?type={LOINC}|11488-4,{LOINC}|68599-0", **LONG)
SEARCHES = (
    "/DocumentReference?subject=Patient/lea&_count=100",
    "/DocumentReference?patient=Patient/lea&_count=2",  # paged: the page and the total
    "/DocumentReference?subject=Patient/lea&_summary=count",
    "/DocumentReference?subject=Patient/lea&_include=DocumentReference:author&_include=DocumentReference:subject",
    "/DocumentReference?subject=Patient/max",
    "/Patient?_id=lea&_revinclude=DocumentReference:subject",
    "/Observation?subject=Patient/lea",
    "/Consent?patient=Patient/lea",
)


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with policy_server(store_url) as c:
        yield c


@contextlib.contextmanager
def counted(client: httpx.AsyncClient) -> Iterator[Counter[str]]:
    """Store calls made while the block runs, by method name."""
    store = client._transport.app.state.context.store  # type: ignore[attr-defined]
    calls: Counter[str] = Counter()
    originals = {name: getattr(store, name) for name in STORE_READS}

    def wrap(name: str):
        original = originals[name]

        async def call(*args, **kwargs):
            calls[name] += 1
            return await original(*args, **kwargs)

        return call

    for name in STORE_READS:
        setattr(store, name, wrap(name))
    try:
        yield calls
    finally:
        for name in STORE_READS:
            delattr(store, name)  # the class's methods again


async def calls_of(client: httpx.AsyncClient, path: str, headers: dict) -> tuple[Counter[str], httpx.Response]:
    with counted(client) as calls:
        response = await client.get(path, headers=headers)
    return Counter(calls), response


def ids(response: httpx.Response) -> set[str]:
    return {e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"}


@pytest.mark.parametrize("path", SEARCHES)
async def test_a_professionals_search_makes_the_store_calls_of_a_system_search(client, path):
    system, answer = await calls_of(client, path, SYSTEM)
    assert answer.status_code == 200, answer.text
    assert system, "no store call counted"
    for name in ("med", "pharma", "gp", "stranger", "blocked"):
        professional, seen = await calls_of(client, path, ps_token(name))
        assert seen.status_code == 200, (name, seen.text)
        if seen.json().get("entry") or "_summary=count" in path:
            assert professional == system, (name, path)
        else:  # an empty page has nothing to include: fewer calls, never more
            assert professional <= system and professional["search_page"] == system["search_page"], (name, path)


async def test_the_policy_narrows_the_same_queries(client):
    """Same calls, other conditions: what comes back differs, and is complete (total = entries)."""
    path = "/DocumentReference?subject=Patient/lea&_count=100"
    everything = ids(await client.get(path, headers=SYSTEM))
    assert everything == LEA_DOCS
    for name, expected_max in (("med", 7), ("pharma", 6), ("stranger", 0)):
        answer = await client.get(path, headers=ps_token(name))
        found = ids(answer)
        assert found < everything or not found
        assert len(found) <= expected_max and answer.json()["total"] == len(found), name


async def test_search_calls_do_not_grow_with_the_record(client):
    """The professional's calls stay the same when the patient's record grows past a page."""
    path = "/DocumentReference?subject=Patient/lea&_count=5"
    before, _ = await calls_of(client, path, ps_token("med"))
    app = client._transport.app  # type: ignore[attr-defined]
    verifier, app.state.auth = app.state.auth, None  # seeded while access is open, as test_policy does
    try:
        for i in range(30):
            doc = document(f"extra-{i}", "lea", (LOINC, "11488-4"))
            assert (await client.put(f"/DocumentReference/extra-{i}", json=doc)).status_code == 201
    finally:
        app.state.auth = verifier
    after, answer = await calls_of(client, path, ps_token("med"))
    assert answer.json()["total"] == 30 + 7 and len(ids(answer)) == 5
    assert after == before


@pytest.mark.parametrize(
    ("path", "medecin_status"),
    [("/DocumentReference/lea-cr", 200), ("/DocumentReference/lea-psy", 200), ("/DocumentReference/lea-resid", 404),
     ("/DocumentReference/lea-masked", 404), ("/DocumentReference/max-cr", 200)],
)  # fmt: skip
async def test_a_professionals_read_makes_the_calls_of_any_confined_read(client, path, medecin_status):
    system, answer = await calls_of(client, path, SYSTEM)
    assert answer.status_code == 200
    assert system == Counter(read_current=1)  # the read fast path
    once = Counter(read_current=1, find_ids=1)  # the read and its visibility query, on the fast path
    # out of reach: the same, then the full route's 404 (the same two calls again): constant whatever the record
    callers = [("confined", SYSTEM_CONFINED)] + [(n, ps_token(n)) for n in ("med", "pharma", "stranger", "gp")]
    for name, headers in callers:
        calls, answer = await calls_of(client, path, headers)
        assert calls == (once if answer.status_code == 200 else once + once), (name, path, answer.status_code)
    # and what they answer differs by the rules only (max-cr: unauthorised, but med wrote it)
    assert (await client.get(path, headers=ps_token("med"))).status_code == medecin_status


async def test_version_and_binary_reads_cost_the_same_calls(client):
    for path in ("/DocumentReference/lea-cr/_history/1", "/DocumentReference/lea-cr/_history"):
        confined, answer = await calls_of(client, path, SYSTEM_CONFINED)
        assert answer.status_code == 200, (path, answer.text)
        for name in ("med", "pharma"):
            professional, seen = await calls_of(client, path, ps_token(name))
            assert seen.status_code == 200, (path, seen.text)
            assert professional == confined, (name, path)
    # a Binary follows its document: still the read and one visibility query (the chain is inside it); the
    # audit trace of a Binary it answers reads its securityContext once more, to name the patient
    for name, status in (("med", 200), ("stranger", 404)):
        professional, seen = await calls_of(client, "/Binary/bin-lea-cr", ps_token(name))
        assert seen.status_code == status
        once = Counter(read_current=1, find_ids=1)
        traced = Counter(read_current=1)
        assert professional == (once + traced if status == 200 else once + once), name

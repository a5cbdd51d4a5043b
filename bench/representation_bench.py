"""What a representative's or delegate's request pays for the re-check of their relationships.

Every request of a token carrying the ``represented`` claim runs ``representatives.held_by``: one indexed
``RelatedPerson?identifier=…&active=true`` query and the parse of what it finds (security/authenticate.py).
This times it on a SQLite store holding many people with a delegate each (docs/performance.md).

    .venv/bin/python bench/representation_bench.py [--people 2000] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime

from fhir_server.fhirjson import dumps
from fhir_server.instant import now_us
from fhir_server.search.indexing import index_entries
from fhir_server.space import representatives as rep
from fhir_server.store import ResourceVersion, Store, open_store


async def put(store: Store, resource: dict) -> None:
    version = ResourceVersion(resource["resourceType"], resource["id"], 1, now_us(), "PUT", dumps(resource))

    async def write(tx) -> None:
        await tx.put(version, index_entries(resource))

    await store.transact(write)


async def main(people: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with open_store(f"sqlite:///{directory}/bench.db") as store:
            for i in range(people):
                await put(store, {"resourceType": "Patient", "id": f"p{i}"})
                delegate = rep.related_person(f"p{i}", rep.DELEGATE, rep.READ, state=rep.ACCEPTED, active=True,
                                              identifiers=[{"system": rep.ACCOUNT, "value": f"user{i}"}])  # fmt: skip
                await put(store, {**delegate, "id": f"rp{i}", "period": {"start": "2020-01-01"}})
            now = datetime.now(UTC)
            links = await rep.links_of(store, "user7", None)
            assert [h.patient for h in await rep.held_by(store, links, now)] == ["p7"]
            samples = []
            for _ in range(rounds):
                started = time.perf_counter()
                await rep.held_by(store, links, now)
                samples.append(time.perf_counter() - started)
    samples.sort()
    median, p95 = statistics.median(samples), samples[int(len(samples) * 0.95)]
    print(f"re-check of a delegate's relationships, SQLite, {people} people with a delegate each: "
          f"median {median * 1e6:.0f} µs, p95 {p95 * 1e6:.0f} µs per request")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.people, args.rounds))

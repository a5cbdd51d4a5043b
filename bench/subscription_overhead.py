"""What R4 Subscriptions cost every write (fhir_server/notify/subscriptions.py): creates of an Observation through
the interaction layer, without the Subscriptions observer, then with it and 0 subscriptions, 10 subscriptions on
another type, 10 non-matching subscriptions on the written type, and 10 of which one matches (enqueues).

    .venv/bin/python bench/subscription_overhead.py [--writes 2000] [--store sqlite:///…]

Prints µs per create (median of 3 rounds, scenarios interleaved) and the observer's own µs per write (timed
around ``written``); the difference to the first line is the write overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from fhir_server.config import Settings
from fhir_server.interactions import Context, crud
from fhir_server.notify.subscriptions import Subscriptions
from fhir_server.store import open_store
from fhir_server.store.query import Search

LOINC = "http://loinc.org"


class Timed:
    """The observer, timed."""

    def __init__(self, inner: Subscriptions) -> None:
        self.inner = inner
        self.ns = 0
        self.calls = 0

    async def written(self, tx, version, entries) -> None:
        started = time.perf_counter_ns()
        await self.inner.written(tx, version, entries)
        self.ns += time.perf_counter_ns() - started
        self.calls += 1


def observation(i: int) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "2339-0"}]},
        "subject": {"reference": f"Patient/p{i % 50}"},
        "valueQuantity": {"value": 1 + i % 7, "unit": "g/L"},
    }


def subscription(criteria: str) -> dict:
    return {"resourceType": "Subscription", "status": "requested", "reason": "bench", "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": "https://hooks.example/fhir"}}  # fmt: skip


async def run(store_url: str, writes: int) -> None:
    settings = Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0)
    store = open_store(store_url)
    await store.start()
    try:
        plain = Context(store=store, settings=settings)
        other = [f"Observation?code={LOINC}|nope-{i}" for i in range(10)]
        scenarios: dict[str, list[str]] = {
            "0 subscriptions": [],
            "10 on another type": [f"Patient?name=nobody{i}" for i in range(10)],
            "10 not matching": other,
            "10, one matching": [*other[:9], f"Observation?code={LOINC}|2339-0"],
        }
        results: dict[str, list[float]] = {"no observer": [], **{k: [] for k in scenarios}}
        own: dict[str, list[float]] = {k: [] for k in scenarios}
        for _ in range(3):
            for name in results:
                for existing in await store.search(Search("Subscription"), 1000):
                    await crud.delete(plain, "Subscription", existing.id)
                ctx, timed = plain, None
                if name != "no observer":
                    for criteria in scenarios[name]:
                        await crud.create(plain, "Subscription", subscription(criteria))
                    timed = Timed(Subscriptions(store, settings))
                    ctx = Context(store=store, settings=settings, observers=(timed,))
                for i in range(50):  # warm-up (and the list of subscriptions loaded)
                    await crud.create(ctx, "Observation", observation(i))
                if timed is not None:
                    timed.ns = timed.calls = 0
                started = time.perf_counter()
                for i in range(writes):
                    await crud.create(ctx, "Observation", observation(i))
                results[name].append((time.perf_counter() - started) / writes * 1e6)
                if timed is not None:
                    own[name].append(timed.ns / timed.calls / 1000)
        base = statistics.median(results["no observer"])
        print(f"store {store_url.split(':', 1)[0]}, {writes} creates per round, median of 3 rounds")
        print(f"{'scenario':<22}{'µs/create':>12}{'overhead µs':>14}{'observer µs':>14}")
        for name, values in results.items():
            median = statistics.median(values)
            observer = f"{statistics.median(own[name]):.1f}" if name in own else "-"
            print(f"{name:<22}{median:>12.1f}{median - base:>14.1f}{observer:>14}")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--store", default=None, help="store URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.store or f"sqlite:///{Path(tmp) / 'bench.db'}", args.writes))


if __name__ == "__main__":
    main()

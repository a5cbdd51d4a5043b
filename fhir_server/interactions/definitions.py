"""Definitional content the server itself runs on, made readable and searchable as resources.

The official R4 SearchParameters (capability/search-parameters-r4.json) drive the search engine; they
are stored once as SearchParameter resources so ``GET /SearchParameter?base=Patient`` answers from the
same engine as any other search. The engine reads the committed registry, not these copies.
"""

from __future__ import annotations

from ..fhirjson import dumps
from ..instant import now_us
from ..search.indexing import index_entries
from ..search.registry import definitions
from ..store import ResourceVersion, Store, Transaction
from .crud import stamp

BATCH = 250


async def load_search_parameters(store: Store) -> int:
    """Store the official SearchParameters if they are not there yet; returns how many were written."""
    todo = [d for d in definitions() if d.get("id")]
    if await store.read_current("SearchParameter", todo[-1]["id"]) is not None:
        return 0  # the last batch is written last: the set is complete
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]

        async def work(tx: Transaction, batch: list[dict] = batch) -> None:
            for definition in batch:
                if await tx.read_current("SearchParameter", definition["id"]) is not None:
                    continue
                body = stamp(definition, definition["id"], 1, now_us())
                version = ResourceVersion("SearchParameter", definition["id"], 1, now_us(), "PUT", dumps(body))
                await tx.put(version, index_entries(body))

        await store.transact(work)
    return len(todo)

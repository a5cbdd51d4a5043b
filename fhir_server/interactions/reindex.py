"""Rebuild search index entries from the stored current versions (after a registry change).

Works type by type in id order, in batches, one transaction per batch; a resource updated meanwhile
keeps the entries its own write computed (its version no longer matches and is skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..fhirjson import loads
from ..search.indexing import index_entries
from ..store import Store, Transaction, VersionConflict
from ..store.query import Search
from ..validation import R4_RESOURCE_TYPES

BATCH = 500


async def reindex(
    store: Store, types: Iterable[str] | None = None, progress: Callable[[str, int], None] | None = None
) -> int:
    """Recompute the entries of every live resource of ``types`` (all by default); returns the count."""
    done = 0
    for type_ in sorted(types or R4_RESOURCE_TYPES):
        after: tuple | None = None
        while page := await store.search_page(Search(type_), BATCH, after=after):
            after = page[-1].key
            versions = [m.version for m in page]

            async def work(tx: Transaction, versions=versions) -> None:
                for version in versions:
                    assert version.body is not None
                    try:
                        await tx.replace_entries(version, index_entries(loads(version.body, max_depth=10_000)))
                    except VersionConflict:
                        continue  # updated since it was read: its own write indexed it

            await store.transact(work)
            done += len(versions)
            if progress:
                progress(type_, done)
    return done

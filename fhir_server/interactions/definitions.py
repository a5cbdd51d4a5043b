"""Definitional content the server itself runs on, made readable and searchable as resources.

The official R4 SearchParameters (capability/search-parameters-r4.json) drive the search engine; they
are stored as SearchParameter resources so ``GET /SearchParameter?base=Patient`` answers from the
same engine as any other search. The engine reads the committed registry, not these copies.
"""

from __future__ import annotations

from ..fhirjson import loads
from ..search.registry import definitions
from ..store import ResourceVersion, Store, Transaction
from ..store.query import Search
from .crud import _write

BATCH = 250
PAGE = 1000
# Canonical URL prefixes of the definitions this server stores (the official ones and its own).
_OWN_URLS = ("http://hl7.org/fhir/SearchParameter/", "https://github.com/fhir-server/fhir-server/SearchParameter/")


async def load_search_parameters(store: Store) -> int:
    """Make the stored SearchParameters mirror the registry; returns how many versions were written.

    Missing definitions are created, stored ones that differ from the registry are updated (a new version),
    and those an earlier registry stored that this one no longer holds are deleted (e.g. the R4 package's
    examples ``SearchParameter/example-reference`` or ``example``, once loaded by mistake). A stored
    SearchParameter counts as one of ours when its url is ``<official or own prefix><id>`` and it holds only
    the elements the registry keeps: anything else stored under that type is left alone.
    """
    wanted = {d["id"]: d for d in definitions() if d.get("id")}
    elements = {key for d in wanted.values() for key in d} | {"meta"}

    def ours(body: dict) -> bool:
        return any(body.get("url") == prefix + body["id"] for prefix in _OWN_URLS) and set(body) <= elements

    stored = await _stored(store)
    todo = sorted(
        {id_ for id_, d in wanted.items() if _content(stored.get(id_)) != d}
        | {id_ for id_, body in stored.items() if id_ not in wanted and ours(body)}
    )
    written = 0
    for start in range(0, len(todo), BATCH):

        async def work(tx: Transaction, batch: list[str] = todo[start : start + BATCH]) -> int:
            count = 0
            for id_ in batch:  # decided again inside the transaction: another process may be at it too
                current = await tx.read_current("SearchParameter", id_)
                body = None if current is None or current.deleted else loads(current.body)
                definition = wanted.get(id_)
                if definition is not None and _content(body) != definition:
                    await _write(tx, "SearchParameter", id_, definition, "PUT", current)
                    count += 1
                elif definition is None and body is not None and ours(body):
                    await _write(tx, "SearchParameter", id_, None, "DELETE", current)
                    count += 1
            return count

        written += await store.transact(work)
    return written


async def _stored(store: Store) -> dict[str, dict]:
    """id → body of every live stored SearchParameter (one query per thousand)."""
    found: dict[str, dict] = {}
    after: str | None = None
    while True:
        page: list[ResourceVersion] = await store.search(Search("SearchParameter"), PAGE, after)
        found.update((v.id, loads(v.body)) for v in page if v.body is not None)
        if len(page) < PAGE:
            return found
        after = page[-1].id


def _content(body: dict | None) -> dict | None:
    """A stored body without its ``meta`` (what the server stamped), to compare with the registry's."""
    return None if body is None else {k: v for k, v in body.items() if k != "meta"}

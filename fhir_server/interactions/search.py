"""search-type (http://hl7.org/fhir/R4/search.html), on the criteria the engine supports so far.

Results come in id order; ``next`` links carry the last id seen, so pages stay correct while data changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..search.criteria import parse_criteria
from ..store import ResourceVersion
from .context import Context
from .paging import decode_cursor, encode_cursor, page_size

RESULT_PARAMETERS = ("_count", "_cursor")


@dataclass(frozen=True, slots=True)
class SearchPage:
    matches: list[ResourceVersion]
    total: int
    next_cursor: str | None


async def search_type(ctx: Context, type_: str, params: list[tuple[str, str]]) -> SearchPage:
    criteria = [(k, v) for k, v in params if k not in RESULT_PARAMETERS]
    results = dict((k, v) for k, v in params if k in RESULT_PARAMETERS)
    query = parse_criteria(type_, criteria)
    limit = page_size(results.get("_count"), ctx.settings.default_page_size, ctx.settings.max_page_size)
    after = decode_cursor(results["_cursor"], 1)[0] if "_cursor" in results else None
    total = await ctx.store.count(query)
    matches = await ctx.store.search(query, limit + 1, after) if limit else []
    next_cursor = None
    if len(matches) > limit:
        matches = matches[:limit]
        next_cursor = encode_cursor([matches[-1].id])
    return SearchPage(matches, total, next_cursor)

"""search-type (http://hl7.org/fhir/R4/search.html).

Results come in id order; ``next`` links carry the last id seen (keyset), so pages stay correct while
data changes. ``_total=none`` and ``_summary=count`` never load a body.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Issue, bad_request, not_supported
from ..search.parameters import parse
from ..store import ResourceVersion
from .context import Context
from .paging import decode_cursor, encode_cursor, page_size

RESULT_PARAMETERS = ("_count", "_cursor", "_total", "_summary")
NOT_YET = ("_sort", "_include", "_revinclude", "_elements", "_contained", "_containedType", "_list", "_text",
           "_content", "_query", "_filter")  # fmt: skip


@dataclass(frozen=True, slots=True)
class SearchPage:
    matches: list[ResourceVersion]
    total: int | None
    next_cursor: str | None
    summary_count: bool = False
    warnings: tuple[Issue, ...] = ()


def _result_parameters(params: list[tuple[str, str]]) -> dict[str, str]:
    results: dict[str, str] = {}
    for name, value in params:
        if name in results:
            raise bad_request(f"{name} may appear only once")
        results[name] = value
    if results.get("_total", "accurate") not in ("none", "estimate", "accurate"):
        raise bad_request(f"_total={results['_total']!r}: expected none, estimate or accurate")
    if results.get("_summary", "count") != "count":
        raise not_supported(f"_summary={results['_summary']!r} is not supported yet (only count)")
    return results


async def search_type(
    ctx: Context, type_: str, params: list[tuple[str, str]], *, base: str = "", lenient: bool = False
) -> SearchPage:
    criteria, results, warnings = [], [], []
    for name, value in params:
        if name in RESULT_PARAMETERS:
            results.append((name, value))
        elif name in NOT_YET:
            raise not_supported(f"Search result parameter {name} is not supported yet")
        else:
            criteria.append((name, value))
    options = _result_parameters(results)
    if lenient:
        criteria, warnings = _drop_unknown(type_, criteria, base)
    search = parse(type_, criteria, base=base)
    if options.get("_summary") == "count":
        return SearchPage([], await ctx.store.count(search), None, summary_count=True)
    limit = page_size(options.get("_count"), ctx.settings.default_page_size, ctx.settings.max_page_size)
    after = decode_cursor(options["_cursor"], 1)[0] if "_cursor" in options else None
    total = None if options.get("_total") == "none" else await ctx.store.count(search)
    matches = await ctx.store.search(search, limit + 1, after) if limit else []
    next_cursor = None
    if len(matches) > limit:
        matches = matches[:limit]
        next_cursor = encode_cursor([matches[-1].id])
    return SearchPage(matches, total, next_cursor, warnings=tuple(warnings))


def _drop_unknown(type_: str, criteria: list[tuple[str, str]], base: str) -> tuple[list[tuple[str, str]], list[Issue]]:
    """``Prefer: handling=lenient``: unusable parameters are reported, not applied."""
    from ..errors import FhirError

    kept, warnings = [], []
    for name, value in criteria:
        try:
            parse(type_, [(name, value)], base=base)
        except FhirError as exc:
            warnings.append(Issue("not-supported", f"Ignored: {exc.message}", severity="warning"))
            continue
        kept.append((name, value))
    return kept, warnings

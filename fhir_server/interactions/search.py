"""search-type and compartment search (http://hl7.org/fhir/R4/search.html).

Pages are keyset cursors over the sort order (``next`` resumes after the last key, ``previous`` walks back
from the first), so links stay correct while data changes. ``_summary=count`` and ``_total=none`` never
load a body. Includes cost one store query per include parameter and round, whatever the page size.
Extra constraints (compartment today, access policy later) are ANDed into the store query itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FhirError, Issue, bad_request, not_supported
from ..fhirjson import dumps, loads
from ..search.compartments import compartment_condition
from ..search.parameters import Scope, parse, valueset_urls
from ..search.results import (
    IncludeSpec,
    parse_elements,
    parse_include,
    parse_sort,
    parse_summary,
    select_elements,
    summarize,
)
from ..search.valuesets import expand
from ..store import ResourceVersion
from ..store.query import Condition, Entry, Search, SortKey
from .context import Context
from .paging import decode_cursor, encode_cursor, page_size

SINGLE = ("_count", "_cursor", "_total", "_summary", "_sort", "_elements")
INCLUDES = ("_include", "_revinclude", "_include:iterate", "_revinclude:iterate", "_include:recurse")
NOT_SUPPORTED = ("_contained", "_containedType", "_list", "_query", "_filter")
MAX_ITERATE = 3


@dataclass(frozen=True, slots=True)
class SearchRequest:
    search: Search
    sort: tuple[SortKey, ...] = ()
    count: int = 50
    cursor: str | None = None
    total: str = "accurate"
    summary: str = "false"
    elements: list[str] | None = None
    includes: tuple[IncludeSpec, ...] = ()
    revincludes: tuple[IncludeSpec, ...] = ()
    warnings: tuple[Issue, ...] = ()
    # Parameters to repeat in paging links (criteria and result parameters, no cursor).
    link_params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SearchPage:
    matches: list[ResourceVersion]
    included: list[ResourceVersion] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None
    warnings: tuple[Issue, ...] = ()
    summary: str = "false"
    elements: list[str] | None = None


async def parse_request(
    ctx: Context,
    type_: str,
    params: list[tuple[str, str]],
    *,
    base: str = "",
    lenient: bool = False,
    constraints: tuple[Condition, ...] = (),
) -> SearchRequest:
    ctx.access.require(type_, "s")
    criteria, single, includes, revincludes = [], {}, [], []
    for name, value in params:
        if name in SINGLE:
            if name in single:
                raise bad_request(f"{name} may appear only once")
            single[name] = value
        elif name in INCLUDES:
            spec = parse_include(name, value, type_)
            (includes if name.startswith("_include") else revincludes).append(spec)
        elif name in NOT_SUPPORTED:
            raise not_supported(f"Search parameter {name} is not supported")
        else:
            criteria.append((name, value))
    warnings: list[Issue] = []
    scope = Scope(base, ctx.constraints, valuesets=await _valuesets(ctx, valueset_urls(criteria)))
    if lenient:
        criteria, warnings = _drop_unusable(type_, criteria, scope)
    search = parse(type_, criteria, scope)
    total = single.get("_total", "accurate")
    if total not in ("none", "estimate", "accurate"):
        raise bad_request(f"_total={total!r}: expected none, estimate or accurate")
    return SearchRequest(
        search=Search(type_, search.where + constraints),
        sort=parse_sort(type_, single["_sort"]) if "_sort" in single else (),
        count=page_size(single.get("_count"), ctx.settings.default_page_size, ctx.settings.max_page_size),
        cursor=single.get("_cursor"),
        total=total,
        summary=parse_summary(single.get("_summary", "false")),
        elements=parse_elements(type_, single["_elements"]) if "_elements" in single else None,
        includes=tuple(includes),
        revincludes=tuple(revincludes),
        warnings=tuple(warnings),
        link_params=tuple((k, v) for k, v in params if k != "_cursor" and (not lenient or _kept(k, criteria))),
    )


async def _valuesets(ctx: Context, urls: set[str]) -> dict[str, tuple]:
    """The stored ValueSets named by ``:in``/``:not-in``, expanded (a missing one is a 400 at parse time)."""
    found = {}
    for url in sorted(urls):
        query = Search("ValueSet", (Entry("url", value=url), *ctx.constraints("ValueSet")))
        page = await ctx.store.search_page(query, 1)
        if page and page[0].version.body is not None:
            found[url] = expand(loads(page[0].version.body, max_depth=10_000))
    return found


def compartment(owner_type: str, owner_id: str, type_: str) -> Condition:
    """The constraint confining a search to ``owner_type/owner_id``'s compartment."""
    return compartment_condition(owner_type, owner_id, type_)


def _kept(name: str, criteria: list[tuple[str, str]]) -> bool:
    return name in SINGLE or name in INCLUDES or any(name == k for k, _ in criteria)


async def search(ctx: Context, request: SearchRequest) -> SearchPage:
    store = ctx.store
    query = Search(request.search.type, request.search.where + ctx.constraints(request.search.type))
    if request.summary == "count":
        return SearchPage([], total=await store.count(query), warnings=request.warnings, summary="count")
    after, reverse = _cursor(request.cursor, len(request.sort) + 1)
    matches = await store.search_page(
        query, request.count + 1, sort=request.sort, after=after, reverse=reverse
    ) if request.count else []  # fmt: skip
    more = len(matches) > request.count
    matches = matches[: request.count]
    if reverse:
        matches.reverse()
    has_next = more if not reverse else after is not None
    has_previous = (after is not None) if not reverse else more
    next_cursor = encode_cursor(["a", *matches[-1].key]) if has_next and matches else None
    previous_cursor = encode_cursor(["b", *matches[0].key]) if has_previous and matches else None
    total = None if request.total == "none" else await store.count(query)
    versions = [m.version for m in matches]
    included = await _includes(ctx, request, versions) if versions else []
    return SearchPage(
        versions, included, total, next_cursor, previous_cursor, request.warnings, request.summary, request.elements
    )


def _cursor(token: str | None, arity: int) -> tuple[tuple | None, bool]:
    if token is None:
        return None, False
    key = decode_cursor(token, arity + 1)
    if key[0] not in ("a", "b"):
        raise bad_request(f"Invalid paging cursor {token!r}")
    return tuple(key[1:]), key[0] == "b"


async def _includes(ctx: Context, request: SearchRequest, matches: list[ResourceVersion]) -> list[ResourceVersion]:
    seen = {(v.type, v.id) for v in matches}
    included: list[ResourceVersion] = []
    frontier = matches
    for round_ in range(MAX_ITERATE + 1):
        found: list[ResourceVersion] = []
        for spec in request.includes:
            if round_ == 0 or spec.iterate:
                ids = [v.id for v in frontier if v.type == spec.source_type]
                for param, targets in spec.params if ids else ():
                    allowed = {t: ctx.constraints(t) for t in targets}
                    found += await ctx.store.include(spec.source_type, ids, param, allowed)
        for spec in request.revincludes:
            if round_ == 0 or spec.iterate:
                refs = [f"{v.type}/{v.id}" for v in frontier]
                source = Search(spec.source_type, ctx.constraints(spec.source_type))
                for param, _ in spec.params:
                    found += await ctx.store.revinclude(refs, source, param)
        frontier = []
        for version in found:
            if (version.type, version.id) not in seen:
                seen.add((version.type, version.id))
                frontier.append(version)
        included += frontier
        if not frontier or not any(s.iterate for s in (*request.includes, *request.revincludes)):
            break
    return included


def shape(body: bytes, summary: str, elements: list[str] | None) -> bytes:
    """Apply ``_summary`` / ``_elements`` to one stored body (only then is it parsed)."""
    if elements is not None:
        return dumps(select_elements(loads(body, max_depth=10_000), elements))
    if summary in ("true", "text", "data"):
        return dumps(summarize(loads(body, max_depth=10_000), summary))
    return body


def _drop_unusable(
    type_: str, criteria: list[tuple[str, str]], scope: Scope
) -> tuple[list[tuple[str, str]], list[Issue]]:
    """``Prefer: handling=lenient``: unusable parameters are reported, not applied."""
    kept, warnings = [], []
    for name, value in criteria:
        try:
            parse(type_, [(name, value)], scope)
        except FhirError as exc:
            warnings.append(Issue("not-supported", f"Ignored: {exc.message}", severity="warning"))
            continue
        kept.append((name, value))
    return kept, warnings

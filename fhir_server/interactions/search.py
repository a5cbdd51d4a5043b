"""search-type, compartment and system-level search (http://hl7.org/fhir/R4/search.html).

Pages are keyset cursors over the sort order (``next`` resumes after the last key, ``previous`` walks back
from the first), so links stay correct while data changes. ``_summary=count`` and ``_total=none`` never
load a body. Includes cost one store query per include parameter and round, whatever the page size.
Extra constraints (compartment today, access policy later) are ANDed into the store query itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field, replace
from functools import cmp_to_key

from ..errors import FhirError, Issue, bad_request, not_supported
from ..fhirjson import dumps, loads
from ..search import registry
from ..search.compartments import compartment_condition
from ..search.indexing import index_entries
from ..search.parameters import Scope, circular_parameter, codesystem_urls, parse, valueset_urls
from ..search.results import (
    IncludeSpec,
    parse_elements,
    parse_include,
    parse_sort,
    parse_summary,
    select_elements,
    summarize,
)
from ..search.valuesets import expand, hierarchy
from ..store import ResourceVersion
from ..store.query import MAX_TEXT, Condition, Entry, IdIn, Search, SortKey
from ..validation import R4_RESOURCE_TYPES
from .context import Context
from .paging import decode_cursor, encode_cursor, page_size

SINGLE = ("_count", "_cursor", "_total", "_summary", "_sort", "_elements")
INCLUDES = ("_include", "_revinclude", "_include:iterate", "_revinclude:iterate", "_include:recurse")
NOT_SUPPORTED = ("_contained", "_containedType", "_query")
MAX_ITERATE = 3


@dataclass(frozen=True, slots=True)
class SearchRequest:
    search: Search
    sort: tuple[SortKey, ...] = ()
    count: int = 50
    cursor: str | None = None
    total: str = "auto"  # no _total: the page at once, an exact total when cheap (docs/search.md "Totals")
    summary: str = "false"
    elements: list[str] | None = None
    includes: tuple[IncludeSpec, ...] = ()
    revincludes: tuple[IncludeSpec, ...] = ()
    warnings: tuple[Issue, ...] = ()
    # Parameters to repeat in paging links (criteria and result parameters, no cursor).
    link_params: tuple[tuple[str, str], ...] = ()
    # System-level search (``_type``): one search per type, merged in one order (``search`` is the first).
    searches: tuple[Search, ...] = ()


@dataclass(frozen=True, slots=True)
class SearchPage:
    matches: list[ResourceVersion]
    included: list[ResourceVersion] = field(default_factory=list)
    total: int | None = None
    #: how ``total`` was obtained when it is not an exact count the client asked for: "estimate", or
    #: "omitted" (too costly to count by default: ``_total=accurate`` counts)
    total_method: str | None = None
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
    criteria, single, includes, revincludes = _split_params(params, (type_,))
    warnings: list[Issue] = []
    scope = await _resolve_links(ctx, type_, criteria, await _scope(ctx, base, criteria))
    if lenient:
        criteria, warnings = _drop_unusable([(type_, scope)], criteria)
    search = parse(type_, criteria, scope)
    return _request(
        ctx,
        params,
        single,
        search=Search(type_, search.where + constraints),
        sort=parse_sort(type_, single["_sort"]) if "_sort" in single else (),
        includes=includes,
        revincludes=revincludes,
        warnings=warnings,
        kept=None if not lenient else criteria,
    )


def _split_params(
    params: list[tuple[str, str]], types: tuple[str, ...]
) -> tuple[list[tuple[str, str]], dict[str, str], list[IncludeSpec], list[IncludeSpec]]:
    """Criteria, single-valued result parameters, ``_include`` and ``_revinclude`` specs."""
    criteria, single, includes, revincludes = [], {}, [], []
    for name, value in params:
        if name in SINGLE:
            if name in single:
                raise bad_request(f"{name} may appear only once")
            single[name] = value
        elif name in INCLUDES:
            source = value.partition(":")[0]
            spec = parse_include(name, value, source if len(types) > 1 and source in types else types[0])
            (includes if name.startswith("_include") else revincludes).append(spec)
        elif name in NOT_SUPPORTED:
            raise not_supported(f"Search parameter {name} is not supported")
        else:
            criteria.append((name, value))
    return criteria, single, includes, revincludes


def _request(
    ctx: Context,
    params: list[tuple[str, str]],
    single: dict[str, str],
    *,
    search: Search,
    sort: tuple[SortKey, ...],
    includes: list[IncludeSpec],
    revincludes: list[IncludeSpec],
    warnings: list[Issue],
    kept: list[tuple[str, str]] | None,
    searches: tuple[Search, ...] = (),
) -> SearchRequest:
    total = single.get("_total", "auto")
    if total not in ("none", "estimate", "accurate", "auto") or ("_total" in single and total == "auto"):
        raise bad_request(f"_total={total!r}: expected none, estimate or accurate")
    return SearchRequest(
        search=search,
        sort=sort,
        count=page_size(single.get("_count"), ctx.settings.default_page_size, ctx.settings.max_page_size),
        cursor=single.get("_cursor"),
        total=total,
        summary=parse_summary(single.get("_summary", "false")),
        elements=parse_elements(search.type, single["_elements"]) if "_elements" in single else None,
        includes=tuple(includes),
        revincludes=tuple(revincludes),
        warnings=tuple(warnings),
        link_params=tuple((k, v) for k, v in params if k != "_cursor" and (kept is None or _kept(k, kept))),
        searches=searches,
    )


async def parse_system_request(
    ctx: Context, params: list[tuple[str, str]], *, base: str = "", lenient: bool = False
) -> SearchRequest:
    """``GET [base]?_type=Observation,Condition&…`` (search.html#_type): the same criteria on every listed type
    (parameters common to all resources, or defined on each listed type), each under the caller's own
    constraints for that type. A listed type the caller may not search is a 403; without ``_type``, every type
    the caller may search."""
    listed = [t for name, value in params if name == "_type" for t in value.split(",")]
    original, params = params, [(name, value) for name, value in params if name != "_type"]
    if listed:
        types = tuple(sorted(set(listed)))
        for type_ in types:
            if type_ not in R4_RESOURCE_TYPES:
                raise bad_request(f"_type: unknown resource type {type_!r}")
            ctx.access.require(type_, "s")
    else:
        types = tuple(t for t in sorted(R4_RESOURCE_TYPES) if ctx.access.may(t, "s"))
        if not types:
            ctx.access.require("Resource", "s")  # nothing searchable: the caller's 403
    criteria, single, includes, revincludes = _split_params(params, types)
    for spec in includes:
        if spec.source_type not in types and not spec.iterate:
            raise bad_request(f"_include={spec.source_type}:…: the source type must be one of the _type list")
    warnings: list[Issue] = []
    scope = await _scope(ctx, base, criteria)
    scopes = [(type_, await _resolve_links(ctx, type_, criteria, scope)) for type_ in types]
    if lenient:
        criteria, warnings = _drop_unusable(scopes, criteria)
    searches = [Search(type_, parse(type_, criteria, typed).where) for type_, typed in scopes]
    sort: tuple[SortKey, ...] = ()
    if "_sort" in single:
        sorts = {parse_sort(t, single["_sort"]) for t in types}
        if len(sorts) != 1:
            raise bad_request(f"_sort={single['_sort']!r}: not sortable the same way on every type searched")
        sort = sorts.pop()
    return _request(
        ctx,
        original,
        single,
        search=searches[0],
        sort=sort,
        includes=includes,
        revincludes=revincludes,
        warnings=warnings,
        kept=None if not lenient else criteria,
        searches=tuple(searches),
    )


async def _scope(ctx: Context, base: str, criteria: list[tuple[str, str]]) -> Scope:
    """What parsing needs from the store: the ValueSets of ``:in``, the CodeSystems of ``:below``/``:above``."""
    valuesets = await _valuesets(ctx, valueset_urls(criteria))
    codesystems = {}
    for url in sorted(codesystem_urls(criteria)):
        query = Search("CodeSystem", (Entry("url", value=url), *ctx.constraints("CodeSystem")))
        page = await ctx.store.search_page(query, 1)
        if page and page[0].version.body is not None:
            codesystems[url] = hierarchy(loads(page[0].version.body, max_depth=10_000))
    return Scope(base, ctx.constraints, valuesets=valuesets, codesystems=codesystems)


async def _valuesets(ctx: Context, urls: set[str]) -> dict[str, tuple]:
    """The stored ValueSets named by ``:in``/``:not-in``, expanded (a missing one is a 400 at parse time)."""
    found = {}
    for url in sorted(urls):
        query = Search("ValueSet", (Entry("url", value=url), *ctx.constraints("ValueSet")))
        page = await ctx.store.search_page(query, 1)
        if page and page[0].version.body is not None:
            found[url] = expand(loads(page[0].version.body, max_depth=10_000))
    return found


async def _resolve_links(ctx: Context, type_: str, criteria: list[tuple[str, str]], scope: Scope) -> Scope:
    """What parsing must look up in the store, found by a first parse that records it (``Scope.wanted``):

    - bare ids given to a reference with several target types (``subject=23``): which of those types hold
      that id, so an ambiguous one is a 400 — one ``IdIn`` query per type, concurrent;
    - reference ``:below`` / ``:above`` (``location:below=42``): the ids down / up the hierarchy of the
      target type's circular reference (``Location.partOf``) — one query per level.

    Both only see what the caller may see (its constraints), so neither reveals a hidden resource."""
    wanted: set[tuple] = set()
    collecting = replace(scope, wanted=wanted)
    for name, value in criteria:
        if _may_look_up(type_, name, value):
            with contextlib.suppress(FhirError):  # reported by the real parse
                parse(type_, [(name, value)], collecting)
    if not wanted:
        return scope
    bare = [(item[1], item[2]) for item in wanted if item[0] == "id"]
    walks = sorted(item[1:] for item in wanted if item[0] == "tree")
    found = await _bare_id_types(ctx, bare) if bare else None
    trees = await asyncio.gather(*(_walk(ctx, *walk) for walk in walks))
    return replace(scope, found=found, linked=dict(zip(walks, trees, strict=True)))


def _may_look_up(type_: str, name: str, value: str) -> bool:
    """Cheap pre-test (the common criteria skip the recording parse): chains, ``_has``, ``:below``/``:above``,
    or a bare id given to a reference parameter."""
    if "." in name or name.startswith("_has:") or name == "_filter":
        return True
    code, _, modifier = name.partition(":")
    if modifier in ("below", "above"):
        return True
    definition = registry.parameter(type_, code)
    return (
        definition is not None
        and definition["type"] == "reference"
        and not modifier
        and any("/" not in part for part in value.split(","))
    )


async def _bare_id_types(ctx: Context, wanted: list[tuple[str, tuple[str, ...]]]) -> dict[str, frozenset[str]]:
    by_type: dict[str, set[str]] = {}
    for id_, targets in wanted:
        for target in targets:
            by_type.setdefault(target, set()).add(id_)

    async def holding(target: str, ids: set[str]) -> tuple[str, list[str]]:
        query = Search(target, (IdIn(tuple(sorted(ids))), *ctx.constraints(target)))
        return target, await ctx.store.find_ids(query, len(ids))

    found: dict[str, set[str]] = {}
    for target, ids in await asyncio.gather(*(holding(t, ids) for t, ids in sorted(by_type.items()))):
        for id_ in ids:
            found.setdefault(id_, set()).add(target)
    return {id_: frozenset(types) for id_, types in found.items()}


MAX_HIERARCHY_DEPTH = 10
MAX_HIERARCHY_SIZE = 1000


async def _walk(ctx: Context, type_: str, id_: str, direction: str) -> tuple[str, ...]:
    """``id_`` and the ids below it (``partOf`` pointing at it, recursively) or above it (its ``partOf``)."""
    param = circular_parameter(type_)
    assert param is not None
    seen, frontier = {id_}, {id_}
    for _ in range(MAX_HIERARCHY_DEPTH):
        if direction == "below":
            refs = tuple(sorted(f"{type_}/{i}" for i in frontier))
            query = Search(type_, (Entry(param, value_in=refs), *ctx.constraints(type_)))
            nxt = set(await ctx.store.find_ids(query, MAX_HIERARCHY_SIZE + 1))
        else:
            query = Search(type_, (IdIn(tuple(sorted(frontier))), *ctx.constraints(type_)))
            prefix = f"{type_}/"
            nxt = {
                e.value[len(prefix) :]
                for v in await ctx.store.search(query, len(frontier))
                if v.body is not None
                for e in index_entries(loads(v.body, max_depth=10_000))
                if e.param == param and isinstance(e.value, str) and e.value.startswith(prefix)
            }
        frontier = nxt - seen
        if not frontier:
            break
        seen |= frontier
        if len(seen) > MAX_HIERARCHY_SIZE:
            raise bad_request(f"{type_}/{id_}: the hierarchy {direction} it has more than {MAX_HIERARCHY_SIZE} members")
    return tuple(sorted(seen))


def compartment(owner_type: str, owner_id: str, type_: str) -> Condition:
    """The constraint confining a search to ``owner_type/owner_id``'s compartment."""
    return compartment_condition(owner_type, owner_id, type_)


def _kept(name: str, criteria: list[tuple[str, str]]) -> bool:
    return name in SINGLE or name in INCLUDES or name == "_type" or any(name == k for k, _ in criteria)


async def search(ctx: Context, request: SearchRequest) -> SearchPage:
    if request.searches:
        return await _search_types(ctx, request)
    store = ctx.store
    query = Search(request.search.type, request.search.where + ctx.constraints(request.search.type))
    if request.summary == "count":
        return SearchPage([], total=await store.count(query), warnings=request.warnings, summary="count")
    after, reverse = _cursor(request.cursor, len(request.sort) + 1)
    matches = await store.search_page(
        query, request.count + 1, sort=request.sort, after=after, reverse=reverse
    ) if request.count else []  # fmt: skip
    keyed = [(m.key, m.version) for m in matches]
    versions, next_cursor, previous_cursor = _window(keyed, request.count, after is not None, reverse)
    complete = request.count and after is None and next_cursor is None  # the first page holds every match
    mode = request.total if request.count else "accurate"  # _count=0: the count alone
    # the first page in id order is a sample of the type the store may scale up to an estimate
    sample = (len(matches), matches[-1].version.id) if matches and after is None and not request.sort else None
    total, method = await _total(ctx, mode, (query,), len(versions) if complete else None, sample)
    included = await _includes(ctx, request, versions) if versions else []
    return SearchPage(
        versions, included, total, method, next_cursor, previous_cursor, request.warnings, request.summary,
        request.elements,
    )  # fmt: skip


#: No ``_total``: the matches are counted exactly while that stays cheap (the store stops at this many).
AUTO_EXACT_UP_TO = 1000


async def _total(
    ctx: Context, mode: str, queries: tuple[Search, ...], known: int | None, sample: tuple[int, str] | None = None
) -> tuple[int | None, str | None]:
    """(Bundle.total, how it was obtained) for ``_total`` = ``mode``: ``accurate`` counts; ``none`` gives
    none; ``estimate`` asks the store's statistics; the default (``auto``) gives the exact number when the
    first page holds every match (``known``) or a bounded count finds at most ``AUTO_EXACT_UP_TO``, else an
    estimate (``sample``: the first page read in id order, (matches, last id), for the store to scale up).
    An estimate is only given to callers the store answers unconfined (the access policy's
    conditions are not in the statistics): a confined caller gets the exact count or nothing, so a total never
    tells what the caller cannot see."""
    store = ctx.store
    if mode == "none":
        return None, None
    if mode == "accurate":
        return sum(await asyncio.gather(*(store.count(q) for q in queries))), None
    if known is not None:
        return known, None
    if mode == "auto":
        counted = await asyncio.gather(*(store.bounded_count(q, AUTO_EXACT_UP_TO) for q in queries))
        if all(c is not None for c in counted):
            return sum(counted), None  # type: ignore[arg-type]
    if all(not ctx.constraints(q.type) for q in queries):
        one = len(queries) == 1  # a sample is one type's first page
        estimates = await asyncio.gather(*(store.estimate(q, sample if one else None) for q in queries))
        if all(e is not None for e in estimates):
            return sum(estimates), "estimate"  # type: ignore[arg-type]
    return None, "omitted"


async def _search_types(ctx: Context, request: SearchRequest) -> SearchPage:
    """A system-level page: each type's next ``count + 1`` matches after the cursor (one query per type,
    concurrent), merged in the order (sort keys…, type, id); the cursor carries the type, so each type
    resumes exactly where the merged order left it."""
    store = ctx.store
    queries = [Search(s.type, s.where + ctx.constraints(s.type)) for s in request.searches]
    if request.summary == "count":
        counts = await asyncio.gather(*(store.count(q) for q in queries))
        return SearchPage([], total=sum(counts), warnings=request.warnings, summary="count")
    after, reverse = _cursor(request.cursor, len(request.sort) + 2)
    if after is not None and not all(isinstance(k, str) for k in after[-2:]):
        raise bad_request(f"Invalid paging cursor {request.cursor!r}")

    def resume(type_: str) -> tuple | None:
        if after is None:
            return None
        *keys, last_type, last_id = after
        return (*keys, last_id if type_ == last_type else MAX_TEXT if type_ < last_type else "")

    async def page(query: Search) -> list[tuple[tuple, ResourceVersion]]:
        found = await store.search_page(
            query, request.count + 1, sort=request.sort, after=resume(query.type), reverse=reverse
        )
        return [((*m.key[:-1], query.type, m.key[-1]), m.version) for m in found]

    pages = await asyncio.gather(*(page(q) for q in queries)) if request.count else []
    order = [key.descending != reverse for key in request.sort] + [reverse, reverse]
    merged = sorted((m for p in pages for m in p), key=cmp_to_key(lambda a, b: _compare(a[0], b[0], order)))
    versions, next_cursor, previous_cursor = _window(merged, request.count, after is not None, reverse)
    complete = request.count and after is None and next_cursor is None
    mode = request.total if request.count else "accurate"
    total, method = await _total(ctx, mode, tuple(queries), len(versions) if complete else None)
    included = await _includes(ctx, request, versions) if versions else []
    return SearchPage(
        versions, included, total, method, next_cursor, previous_cursor, request.warnings, request.summary,
        request.elements,
    )  # fmt: skip


def _window(
    found: list[tuple[tuple, ResourceVersion]], count: int, resumed: bool, reverse: bool
) -> tuple[list[ResourceVersion], str | None, str | None]:
    """A page from ``count + 1`` (sort key, version) matches fetched after a cursor (``resumed``), walking
    forward or backward (``reverse``): its versions in order, and the ``next``/``previous`` cursors."""
    more = len(found) > count
    found = found[:count]
    if reverse:
        found.reverse()
    has_next = more if not reverse else resumed
    has_previous = resumed if not reverse else more
    next_cursor = encode_cursor(["a", *found[-1][0]]) if has_next and found else None
    previous_cursor = encode_cursor(["b", *found[0][0]]) if has_previous and found else None
    return [version for _, version in found], next_cursor, previous_cursor


def _compare(a: tuple, b: tuple, descending: list[bool]) -> int:
    for x, y, down in zip(a, b, descending, strict=True):
        if x != y:
            return (1 if x < y else -1) if down else (-1 if x < y else 1)
    return 0


def _cursor(token: str | None, arity: int) -> tuple[tuple | None, bool]:
    if token is None:
        return None, False
    key = decode_cursor(token, arity + 1)
    if key[0] not in ("a", "b"):
        raise bad_request(f"Invalid paging cursor {token!r}")
    return tuple(key[1:]), key[0] == "b"


async def _includes(ctx: Context, request: SearchRequest, matches: list[ResourceVersion]) -> list[ResourceVersion]:
    seen = {(v.type, v.id, v.version) for v in matches}  # a versioned reference may include an older version
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
            if (version.type, version.id, version.version) not in seen:
                seen.add((version.type, version.id, version.version))
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
    scopes: list[tuple[str, Scope]], criteria: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[Issue]]:
    """``Prefer: handling=lenient``: unusable parameters (on any of the types) are reported, not applied."""
    kept, warnings = [], []
    for name, value in criteria:
        try:
            for type_, scope in scopes:
                parse(type_, [(name, value)], scope)
        except FhirError as exc:
            warnings.append(Issue("not-supported", f"Ignored: {exc.message}", severity="warning"))
            continue
        kept.append((name, value))
    return kept, warnings

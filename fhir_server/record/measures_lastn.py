"""``Observation/$lastn`` (R4 OperationDefinition Observation-lastn): for each code, the last ``max``
Observations by effective date, among those the search parameters select (patient or subject, category,
code, date).

It runs the ordinary search (``_sort=-date``) with the caller's context, so the caller's access constraints
are ANDed into every store query as for any search: what the caller may not see is never a candidate.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import bad_request
from ..fhirjson import loads
from ..interactions import search as search_interaction
from ..interactions.context import Context
from ..interactions.search import SearchPage, SearchRequest

MAX_MAX = 100  # observations per code: a "last measures" tile needs a handful
#: Observations scanned when no code is given (one page per round trip): the codes found are grouped.
SCAN_LIMIT = 10_000
_RESULT = ("_sort", "_count", "_cursor", "_total", "_include", "_revinclude")


def parse_max(params: list[tuple[str, str]]) -> int:
    values = [v for k, v in params if k == "max"]
    if len(values) > 1:
        raise bad_request("max may appear only once")
    raw = values[0] if values else "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_MAX:
        raise bad_request(f"max={raw!r}: a whole number from 1 to {MAX_MAX}", expression=("max",))
    return int(raw)


def _codes(params: list[tuple[str, str]]) -> list[str]:
    """Each requested code on its own (``code=a,b`` and repeated ``code`` OR'ed: one group per code)."""
    return [c for k, v in params if k == "code" for c in v.split(",") if c]


async def lastn(ctx: Context, params: list[tuple[str, str]], base: str) -> tuple[SearchRequest, SearchPage]:
    """The searchset request (for its self link) and the page of the last ``max`` per code."""
    size = parse_max(params)
    for name, _ in params:
        if name in _RESULT:
            raise bad_request(f"$lastn takes no {name} (it sorts by date and returns max per code)")
    criteria = [(k, v) for k, v in params if k != "max"]
    if not any(k in ("patient", "subject") or k.startswith(("patient:", "subject:")) for k, _ in criteria):
        raise bad_request("$lastn needs patient or subject (Observation-lastn)", expression=("patient",))
    others = [(k, v) for k, v in criteria if k != "code"]
    codes = _codes(criteria)
    matches = []
    if codes:
        for code in dict.fromkeys(codes):
            request = await _sorted(ctx, [*others, ("code", code)], base, size)
            matches += (await search_interaction.search(ctx, request)).matches
    else:
        matches = await _scan(ctx, others, base, size)
    shown = await search_interaction.parse_request(ctx, "Observation", criteria, base=base)
    shown = replace(shown, link_params=tuple(params))
    return shown, SearchPage(matches=matches, total=len(matches))


async def _sorted(ctx: Context, criteria: list[tuple[str, str]], base: str, count: int) -> SearchRequest:
    request = await search_interaction.parse_request(ctx, "Observation", [*criteria, ("_sort", "-date")], base=base)
    return replace(request, count=count, total="none")


async def _scan(ctx: Context, criteria: list[tuple[str, str]], base: str, size: int) -> list:
    """Without a code: the newest first, page by page, keeping ``size`` per code."""
    request = await _sorted(ctx, criteria, base, ctx.settings.max_page_size)
    groups: dict[str, list] = {}
    scanned = 0
    while True:
        page = await search_interaction.search(ctx, request)
        for version in page.matches:
            group = groups.setdefault(_code_key(version.body), [])
            if len(group) < size:
                group.append(version)
        scanned += len(page.matches)
        if not page.next_cursor or scanned >= SCAN_LIMIT:
            break
        request = replace(request, cursor=page.next_cursor)
    return [v for group in groups.values() for v in group]


def _code_key(body: bytes | None) -> str:
    codings = ((loads(body) if body else {}).get("code") or {}).get("coding") or ()
    first = next((c for c in codings if isinstance(c, dict)), {})
    return f"{first.get('system', '')}|{first.get('code', '')}"

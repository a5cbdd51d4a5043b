"""history at instance, type and system level (http://hl7.org/fhir/R4/http.html#history)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import bad_request, forbidden
from ..instant import date_range
from ..store import HistoryQuery, ResourceVersion
from .context import Context
from .crud import require_versions_visible
from .paging import decode_cursor, encode_cursor, page_size

PARAMETERS = ("_count", "_since", "_at", "_cursor")


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[ResourceVersion]
    total: int
    next_cursor: str | None


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"{name} may appear only once")
    return values[0]


def _date(name: str, value: str) -> tuple[int, int]:
    found = date_range(value)
    if found is None:
        raise bad_request(f"{name}={value!r} is not a valid FHIR date, dateTime or instant")
    return found


async def _check_access(ctx: Context, type_: str | None, id_: str | None) -> None:
    """Instance history is a read of the resource; type and system history list every version of every
    resource, so a caller confined to part of the data (a patient's compartment, granular scopes) is
    refused them rather than shown versions its constraints cannot test (index entries are current-only)."""
    if type_ is None:
        if not ctx.access.sees_everything():
            raise forbidden("System history needs access to every resource type (e.g. system/*.rs)")
        return
    if id_ is not None:
        ctx.access.require(type_, "r")
        await require_versions_visible(ctx, type_, id_)
        return
    ctx.access.require(type_, "s")
    if ctx.constraints(type_):
        raise forbidden(f"{type_} history is not available to a token confined to part of the {type_} data")


async def history(
    ctx: Context, params: dict[str, list[str]], type_: str | None = None, id_: str | None = None
) -> HistoryPage:
    for name in params:
        if name not in PARAMETERS:
            raise bad_request(f"Parameter '{name}' is not supported by history (supported: {', '.join(PARAMETERS)})")
    await _check_access(ctx, type_, id_)
    limit = page_size(_one(params, "_count"), ctx.settings.default_page_size, ctx.settings.max_page_size)
    since = _one(params, "_since")
    at = _one(params, "_at")
    cursor = _one(params, "_cursor")
    at_range = _date("_at", at) if at else (None, None)
    query = HistoryQuery(
        type=type_,
        id=id_,
        since=_date("_since", since)[0] if since else None,
        at_low=at_range[0],
        at_high=at_range[1],
        before=tuple(decode_cursor(cursor, 4)) if cursor else None,  # type: ignore[arg-type]
        limit=limit + 1,
    )
    total = await ctx.store.count_history(HistoryQuery(type_, id_, query.since, query.at_low, query.at_high))
    versions = await ctx.store.history(query) if limit else []
    next_cursor = None
    if len(versions) > limit:
        versions = versions[:limit]
        last = versions[-1]
        next_cursor = encode_cursor((last.last_updated, last.type, last.id, last.version))
    return HistoryPage(versions, total, next_cursor)

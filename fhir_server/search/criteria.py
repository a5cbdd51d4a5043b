"""Search criteria as used by conditional interactions (``If-None-Exist``, ``PUT/DELETE [type]?…``).

Supports ``_id`` and ``identifier`` (token) today; any other parameter is refused with a 400 naming it,
never ignored: ignoring a criterion would widen a conditional update or delete to unintended resources.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from ..errors import bad_request
from ..store import StoreQuery, TokenMatch

SUPPORTED = ("_id", "identifier")


def parse_token(raw: str) -> tuple[str | None, str]:
    """``system|code`` → (system, code); ``|code`` → ("", code); ``code`` → (None, code)."""
    if "|" not in raw:
        return None, raw
    system, code = raw.split("|", 1)
    return system, code


def parse_criteria(type_: str, pairs: list[tuple[str, str]]) -> StoreQuery:
    ids: set[str] | None = None
    all_of: list[tuple[TokenMatch, ...]] = []
    for name, value in pairs:
        if name not in SUPPORTED:
            raise bad_request(
                f"Search parameter '{name}' is not supported for {type_} (supported: _id, identifier)"
            )
        if not value:
            raise bad_request(f"Search parameter '{name}' has an empty value")
        values = value.split(",")
        if name == "_id":
            ids = set(values) if ids is None else ids & set(values)
            continue
        matches = []
        for raw in values:
            system, code = parse_token(raw)
            if not code:
                raise bad_request(
                    f"identifier={raw!r}: a code is required (system| alone is not supported yet)"
                )
            matches.append(TokenMatch("identifier", code, system))
        all_of.append(tuple(matches))
    return StoreQuery(type_, tuple(sorted(ids)) if ids is not None else None, tuple(all_of))


def parse_criteria_string(type_: str, query: str) -> StoreQuery:
    pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    if not pairs:
        raise bad_request("Conditional criteria are empty")
    return parse_criteria(type_, pairs)

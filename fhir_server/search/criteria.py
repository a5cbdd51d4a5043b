"""Search criteria as used by conditional interactions (``If-None-Exist``, ``PUT/DELETE [type]?…``).

The full search grammar applies; result parameters (``_count``, ``_sort``…) make no sense here and are
refused, as is any unknown parameter: ignoring a criterion would widen a conditional update or delete.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from ..errors import bad_request
from ..store.query import Search
from .parameters import parse


def parse_criteria(type_: str, pairs: list[tuple[str, str]]) -> Search:
    if not pairs:
        raise bad_request("Conditional criteria are empty")
    for name, _ in pairs:
        if name in ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total"):
            raise bad_request(f"{name} is not a search criterion")
    return parse(type_, pairs)


def parse_criteria_string(type_: str, query: str) -> Search:
    return parse_criteria(type_, parse_qsl(query.lstrip("?"), keep_blank_values=True))

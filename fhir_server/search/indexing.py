"""Index entries computed at write time, stored with the version in the same atomic write.

For now: ``identifier`` tokens (what conditional create/update/delete and references by business
identifier such as the INS need). The full SearchParameter registry plugs in here.
"""

from __future__ import annotations

from typing import Any

from ..store import IndexEntry


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def index_entries(resource: dict) -> list[IndexEntry]:
    entries: list[IndexEntry] = []
    for identifier in _as_list(resource.get("identifier")):
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            entries.append(
                IndexEntry("identifier", value=identifier["value"], system=identifier.get("system"))
            )
    return entries

"""SearchParameter definitions: the official R4 set committed under capability/, plus ours
(``search-parameters-custom.json``: parameters the access rules need, e.g. ``Binary?securitycontext``)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

CAPABILITY_DIR = Path(__file__).resolve().parents[2] / "capability"


SOURCES = ("search-parameters-r4.json", "search-parameters-custom.json")


@lru_cache(maxsize=1)
def definitions() -> tuple[dict, ...]:
    found: list[dict] = []
    for name in SOURCES:
        with open(CAPABILITY_DIR / name, "rb") as f:
            found += json.load(f)["parameters"]
    return tuple(found)


@lru_cache(maxsize=1)
def by_type() -> dict[str, dict[str, dict]]:
    """resource type → code → definition (``Resource``/``DomainResource`` ones apply to all types)."""
    table: dict[str, dict[str, dict]] = {}
    for definition in definitions():
        for base in definition.get("base", ()):
            table.setdefault(base, {})[definition["code"]] = definition
    return table


# Resources that are not DomainResources: no text, contained, extensions (so no _text, _content…).
NOT_DOMAIN = ("Bundle", "Binary", "Parameters")


def parameter(type_: str, code: str) -> dict | None:
    return parameters_of(type_).get(code)


@lru_cache(maxsize=512)
def parameters_of(type_: str) -> dict[str, dict]:
    """Every parameter usable on a type: its own, the ``Resource`` ones and, for DomainResources, theirs."""
    table = by_type()
    domain = {} if type_ in NOT_DOMAIN else table.get("DomainResource", {})
    return {**table.get("Resource", {}), **domain, **table.get(type_, {})}


@lru_cache(maxsize=1)
def by_url() -> dict[str, dict]:
    """canonical url → definition (composite components name their parts by url)."""
    return {d["url"]: d for d in definitions()}

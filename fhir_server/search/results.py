"""Search result parameters: ``_sort``, ``_include``/``_revinclude``, ``_summary``, ``_elements``.

Parsing only: they are checked strictly (unknown parameter or type → 400) before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from ..errors import bad_request
from ..store.query import SortKey
from . import registry

RANGE_TYPES = ("date", "number", "quantity")
VALUE_TYPES = ("string", "token", "reference", "uri")
SUMMARY_MODES = ("true", "text", "data", "count", "false")
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def parse_sort(type_: str, value: str) -> tuple[SortKey, ...]:
    keys = []
    for raw in value.split(","):
        descending = raw.startswith("-")
        code = raw.removeprefix("-")
        if code == "_id":
            keys.append(SortKey("_id", descending))
            continue
        definition = registry.parameter(type_, code)
        if definition is None:
            raise bad_request(f"_sort: unknown search parameter {code!r} for {type_}")
        kind = definition["type"]
        if kind not in RANGE_TYPES + VALUE_TYPES:
            raise bad_request(f"_sort: {code!r} is a {kind} parameter, which cannot be sorted on")
        keys.append(SortKey(code, descending, "range" if kind in RANGE_TYPES else "value"))
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class IncludeSpec:
    """``_include=Source:param[:Target]`` (``param`` ``*`` = every reference parameter)."""

    source_type: str
    params: tuple[tuple[str, tuple[str, ...]], ...]  # (parameter, the types it may point at)
    iterate: bool


def parse_include(name: str, value: str, searched_type: str) -> IncludeSpec:
    iterate = name.endswith(":iterate") or name.endswith(":recurse")
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise bad_request(f"{name}={value!r}: expected SourceType:parameter[:TargetType]")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in registry.by_type():
        raise bad_request(f"{name}={value!r}: unknown resource type {source!r}")
    if name.startswith("_include") and not iterate and source != searched_type:
        raise bad_request(f"{name}={value!r}: the source type must be {searched_type} (or use :iterate)")
    if code == "*":
        refs = sorted((c, d) for c, d in registry.parameters_of(source).items() if d["type"] == "reference")
        params = tuple((c, tuple(d.get("target", ()))) for c, d in refs)
    else:
        definition = registry.parameter(source, code)
        if definition is None or definition["type"] != "reference":
            raise bad_request(f"{name}={value!r}: {code!r} is not a reference parameter of {source}")
        if target and target not in definition.get("target", ()):
            raise bad_request(f"{name}={value!r}: {code!r} cannot point at {target}")
        params = ((code, (target,) if target else tuple(definition.get("target", ()))),)
    return IncludeSpec(source, params, iterate)


@lru_cache(maxsize=1)
def _elements() -> dict[str, dict[str, list[str]]]:
    with open(registry.CAPABILITY_DIR / "resource-elements-r4.json", "rb") as f:
        return json.load(f)


def _matches(key: str, names: set[str]) -> bool:
    """A JSON key belongs to an element name, choice types included (``deceasedBoolean`` → ``deceased[x]``)."""
    base = key.removeprefix("_")
    if base in names:
        return True
    return any(n.endswith("[x]") and base.startswith(n[:-3]) and base[len(n) - 3 : len(n) - 2].isupper() for n in names)


def _subset(resource: dict, keep: set[str]) -> dict:
    out = {k: v for k, v in resource.items() if k == "resourceType" or _matches(k, keep)}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


def summarize(resource: dict, mode: str) -> dict:
    """``_summary=true|text|data`` (search.html#summary); ``false`` returns the resource unchanged."""
    facts = _elements().get(resource.get("resourceType", ""), {"summary": [], "mandatory": []})
    if mode == "true":
        return _subset(resource, {"id", "meta", *facts["summary"]})
    if mode == "text":
        return _subset(resource, {"id", "meta", "text", *facts["mandatory"]})
    if mode == "data":
        return _subset(resource, set(resource) - {"text"})
    return resource


def select_elements(resource: dict, elements: list[str]) -> dict:
    """``_elements``: the listed top-level elements plus the mandatory ones (search.html#elements)."""
    facts = _elements().get(resource.get("resourceType", ""), {"mandatory": []})
    return _subset(resource, {"id", "meta", *elements, *facts["mandatory"]})


def parse_summary(value: str) -> str:
    if value not in SUMMARY_MODES:
        raise bad_request(f"_summary={value!r}: expected one of {', '.join(SUMMARY_MODES)}")
    return value


def parse_elements(type_: str, value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise bad_request("_elements is empty")
    for name in names:
        if "." in name:
            raise bad_request(f"_elements={name!r}: only top-level element names are supported")
    return names

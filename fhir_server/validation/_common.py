"""Shared pieces of the two validators: locations, FHIRPath-style expressions, issue helpers."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import Issue

MAX_ISSUES = 20

# R4 ``id`` (http://hl7.org/fhir/R4/datatypes.html#id); the R4B models allow up to 255 characters.
ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")

# JSON property names FHIR can use: tells element names from pydantic-internal segments of an error ``loc``.
NAME_RE = re.compile(r"_?[A-Za-z][A-Za-z0-9]*")

_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_ASCII_SPACE = str.maketrans("", "", " \t\r\n")

# A location inside the resource: property names and array indexes, as in pydantic's ``loc``.
Loc = tuple[str | int, ...]

# Validates a nested resource (contained, Bundle.entry.resource, Parameters.parameter.resource) given the
# expression of where it sits; lets each validator hand nested resources to the other one.
Nested = Callable[[dict, str], list[Issue]]


def expression(root: str, loc: Loc, *, raw_last: bool = False) -> str:
    """``('name', 0, 'given', 1)`` -> ``Patient.name[0].given[1]``.

    A primitive's ``_x`` extension sibling is reported as the primitive itself (FHIRPath sees the
    extension as a child of the value), except for the last segment when ``raw_last`` asks to name an
    unknown property exactly as sent.
    """
    parts = [root]
    last = len(loc) - 1
    for i, seg in enumerate(loc):
        if isinstance(seg, int):
            parts.append(f"[{seg}]")
        elif seg.startswith("_") and not (raw_last and i == last):
            parts.append("." + seg[1:])
        else:
            parts.append("." + seg)
    return "".join(parts)


def make_issue(code: str, diagnostics: str, root: str, loc: Loc, *, raw_last: bool = False) -> Issue:
    return Issue(code, diagnostics, expression=(expression(root, loc, raw_last=raw_last),))


def is_base64(value: str) -> bool:
    r"""R4 base64Binary, checked without its regex ``(\s*([0-9a-zA-Z\+/=]){4}\s*)+``, which backtracks
    quadratically on long runs of whitespace (a request could make it spin for seconds)."""
    compact = value.translate(_ASCII_SPACE)
    return len(compact) % 4 == 0 and _BASE64_RE.fullmatch(compact) is not None


def describe(value: object, limit: int = 60) -> str:
    """A short rendering of an offending value for diagnostics."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "number"

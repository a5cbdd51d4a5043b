"""FHIR JSON in and out.

Decimals are parsed as ``Decimal`` and written back verbatim: FHIR says the precision of a decimal is
significant (``1.50`` is not ``1.5``, http://hl7.org/fhir/R4/datatypes.html#decimal). orjson writes the
rest, which keeps the hot path fast.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from .errors import bad_request


def _fragment(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(obj: Any, *, pretty: bool = False) -> bytes:
    return orjson.dumps(obj, default=_fragment, option=orjson.OPT_INDENT_2 if pretty else 0)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(body: bytes, *, max_depth: int = 64) -> Any:
    """Parse a request body: strict UTF-8, valid JSON, bounded nesting; errors are 400s.

    orjson first (several times faster); a body with a decimal number in it is parsed again with
    ``Decimal`` (orjson would round it to a float), as is anything orjson refuses (for the message)."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        if not _has_float(value, max_depth):
            return value
    return _loads_exact(body, max_depth)


def _has_float(value: Any, max_depth: int) -> bool:
    """Checks the nesting bound on the way (400 beyond it)."""
    if not isinstance(value, dict | list):  # a bare scalar body (``null``, ``1.5``): the caller refuses it
        return isinstance(value, float)
    stack = [(value, 1)]
    found = False
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise bad_request(f"JSON nesting deeper than {max_depth} levels")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif isinstance(child, float):
                found = True
    return found


def _loads_exact(body: bytes, max_depth: int) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"Request body is not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except RecursionError:
        raise bad_request(f"JSON nesting deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise bad_request(f"Malformed JSON: {exc}") from None
    _check_depth(value, max_depth)
    return value


def _check_depth(value: Any, max_depth: int) -> None:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise bad_request(f"JSON nesting deeper than {max_depth} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))

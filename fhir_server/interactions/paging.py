"""Opaque paging cursors and ``_count`` handling shared by history and search."""

from __future__ import annotations

import base64

import orjson

from ..errors import bad_request


def encode_cursor(key: tuple | list) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(token: str, arity: int) -> list:
    try:
        key = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        key = None
    if not isinstance(key, list) or len(key) != arity:
        raise bad_request(f"Invalid paging cursor {token!r}")
    return key


def page_size(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit():
        raise bad_request(f"_count must be a non-negative integer, got {raw!r}")
    return min(int(raw), maximum)

"""Persistence: one Store protocol, two backends chosen by URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import (
    HistoryQuery,
    IndexEntry,
    QueryTooCostly,
    ResourceVersion,
    Store,
    StoreQuery,
    StoreUnavailable,
    TokenMatch,
    Transaction,
    VersionConflict,
)

__all__ = [
    "HistoryQuery",
    "IndexEntry",
    "QueryTooCostly",
    "ResourceVersion",
    "Store",
    "StoreQuery",
    "StoreUnavailable",
    "TokenMatch",
    "Transaction",
    "VersionConflict",
    "open_store",
    "sqlite_path",
]


def sqlite_path(url: str) -> str:
    """``sqlite:///rel/path.db`` → ``rel/path.db``; ``sqlite:////abs.db`` → ``/abs.db`` (SQLAlchemy style)."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    path = url[len("sqlite:///") :]
    if not path:
        raise ValueError("sqlite URL has no path: use sqlite:///relative.db or sqlite:////absolute.db")
    return path


def open_store(url: str, *, write_concern: str = "majority", read_cache_entries: int = 0) -> Store:
    """Build (not start) the store a URL names (``read_cache_entries``: SQLite's current-version cache)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), read_cache_entries)
    if scheme in ("mongodb", "mongodb+srv"):
        from .mongo import MongoStore

        return MongoStore(url, write_concern=write_concern)
    raise ValueError(f"unsupported store URL scheme {scheme!r}: use sqlite:///… or mongodb://…")

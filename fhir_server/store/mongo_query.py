"""Search predicate trees (store.query) → MongoDB filters on the ``resource`` collection.

Entry conditions become ``idx: {$elemMatch: …}`` (so every test hits the same entry, served by the
multikey ``index_value`` / ``index_range`` indexes). Chains and ``_has`` are resolved level by level:
one bounded find per level, whatever the number of matches, then ``$in`` on the referring values.
"""

from __future__ import annotations

import re
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from .base import QueryTooCostly
from .query import MAX_NUMBER, MAX_TEXT, AllOf, AnyOf, Chain, Condition, Entry, Has, IdIn, Missing, Not, Search, SortKey

_MAX_CHAR = MAX_TEXT
_OPS = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
_FALSE: dict[str, Any] = {"_id": {"$in": []}}

# A chained or reverse-chained level may resolve to at most this many resources; beyond it the query
# is refused rather than sending an unbounded $in list (see search.py, which maps it to a 400).
MAX_LINKED = 10_000


class TooManyLinked(QueryTooCostly):
    """A chain / _has level matched more than MAX_LINKED resources."""


async def compile_search(current: AsyncCollection, search: Search, session=None) -> dict[str, Any]:
    """The filter for the live matches of ``search`` (type and deletion included)."""
    parts: list[dict[str, Any]] = [{"t": search.type}, {"del": False}]
    for cond in search.where:
        parts.append(await _condition(current, cond, search.type, session))
    return {"$and": parts}


async def _condition(current: AsyncCollection, cond: Condition, owner_type: str, session) -> dict[str, Any]:
    match cond:
        case Entry():
            return {"idx": {"$elemMatch": _entry(cond)}}
        case Missing(param=param, missing=missing):
            return {"idx.p": {"$ne": param}} if missing else {"idx.p": param}
        case Not(condition=inner):
            return {"$nor": [await _condition(current, inner, owner_type, session)]}
        case AnyOf(conditions=conds):
            if not conds:
                return _FALSE
            return {"$or": [await _condition(current, c, owner_type, session) for c in conds]}
        case AllOf(conditions=conds):
            if not conds:
                return {}
            return {"$and": [await _condition(current, c, owner_type, session) for c in conds]}
        case IdIn(ids=ids):
            return {"i": {"$in": list(ids)}}
        case Chain(param=param, target=target):
            ids = await _matching_ids(current, target, session)
            refs = [f"{target.type}/{i}" for i in ids]
            return {"idx": {"$elemMatch": {"p": param, "v": {"$in": refs}}}}
        case Has(param=param, source=source):
            return {"i": {"$in": await _referenced_ids(current, param, source, owner_type, session)}}
    raise TypeError(f"unknown search condition {cond!r}")


def _entry(entry: Entry) -> dict[str, Any]:
    doc: dict[str, Any] = {"p": entry.param if entry.or_param is None else {"$in": [entry.param, entry.or_param]}}
    value: dict[str, Any] = {}
    if entry.value is not None:
        value["$eq"] = entry.value
    if entry.value_in is not None:
        value["$in"] = list(entry.value_in)
    if entry.value_prefix is not None:
        value["$gte"] = entry.value_prefix
        value["$lt"] = entry.value_prefix + _MAX_CHAR
    if entry.value_contains is not None:
        value["$regex"] = re.escape(entry.value_contains)
    if entry.value_suffix is not None:
        value["$regex"] = re.escape(entry.value_suffix) + "$"
    if value:
        doc["v"] = value["$eq"] if list(value) == ["$eq"] else value
    if entry.no_system:
        doc["s"] = None
    elif entry.system is not None:
        doc["s"] = entry.system
    elif entry.system_suffix is not None:
        doc["s"] = {"$regex": re.escape(entry.system_suffix) + "$"}
    for r in entry.ranges:
        key = "lo" if r.field == "low" else "hi"
        doc.setdefault(key, {})[_OPS[r.op]] = float(r.bound)
    return doc


async def _matching_ids(current: AsyncCollection, search: Search, session) -> list[str]:
    flt = await compile_search(current, search, session)
    docs = await current.find(flt, {"_id": 0, "i": 1}, session=session).limit(MAX_LINKED + 1).to_list(None)
    if len(docs) > MAX_LINKED:
        raise TooManyLinked(f"a chained search level matches more than {MAX_LINKED} {search.type} resources")
    return [d["i"] for d in docs]


async def _referenced_ids(current: AsyncCollection, param: str, source: Search, owner_type: str, session) -> list[str]:
    flt = await compile_search(current, source, session)
    prefix = f"{owner_type}/"
    flt["$and"].append({"idx": {"$elemMatch": {"p": param, "v": {"$gte": prefix, "$lt": prefix + _MAX_CHAR}}}})
    cursor = current.find(flt, {"_id": 0, "idx": 1}, session=session).limit(MAX_LINKED + 1)
    docs = await cursor.to_list(None)
    if len(docs) > MAX_LINKED:
        raise TooManyLinked(f"a _has level matches more than {MAX_LINKED} {source.type} resources")
    ids = {
        e["v"][len(prefix) :]
        for d in docs
        for e in d.get("idx", ())
        if e.get("p") == param and isinstance(e.get("v"), str) and e["v"].startswith(prefix)
    }
    return sorted(ids)


def _sort_value(key: SortKey) -> dict[str, Any]:
    """The aggregation expression of a resource's sort value for ``key`` (missing sorts last)."""
    if key.param == "_id":
        return {"$literal": None}
    field = "v" if key.by == "value" else ("hi" if key.descending else "lo")
    values = {
        "$map": {
            "input": {"$filter": {"input": {"$ifNull": ["$idx", []]}, "cond": {"$eq": ["$$this.p", key.param]}}},
            "in": f"$$this.{field}",
        }
    }
    # A fold rather than {$max: <array>}: the one-array-argument form is not supported everywhere
    # (the test stand-in returns null for it), a $reduce is.
    better = "$gt" if key.descending else "$lt"
    aggregate = {
        "$reduce": {
            "input": values,
            "initialValue": None,
            "in": {
                "$cond": [
                    {"$or": [{"$eq": ["$$value", None]}, {better: ["$$this", "$$value"]}]},
                    "$$this",
                    "$$value",
                ]
            },
        }
    }
    if key.by == "value":
        return {"$ifNull": [aggregate, "" if key.descending else MAX_TEXT]}
    missing = -MAX_NUMBER if key.descending else MAX_NUMBER
    return {"$max": [{"$min": [{"$ifNull": [aggregate, missing]}, MAX_NUMBER]}, -MAX_NUMBER]}


def _keyset(columns: list[tuple[str, bool]], after: tuple) -> dict[str, Any]:
    """Documents strictly after ``after`` in the order of ``columns`` ((field, descending) pairs)."""
    ors = []
    for i, (field, descending) in enumerate(columns):
        clause: dict[str, Any] = {c: after[j] for j, (c, _) in enumerate(columns[:i])}
        clause[field] = {"$lt" if descending else "$gt": after[i]}
        ors.append(clause)
    return {"$or": ors}


async def sorted_pipeline(
    current: AsyncCollection,
    search: Search,
    sort: tuple[SortKey, ...],
    after: tuple | None,
    limit: int,
    reverse: bool = False,
) -> list[dict[str, Any]]:
    """$match → sort keys as fields k0…kn → keyset → $sort → $limit, projecting {i, v, k…}."""
    keys = {f"k{i}": ("$i" if key.param == "_id" else _sort_value(key)) for i, key in enumerate(sort)}
    columns = [(f"k{i}", key.descending != reverse) for i, key in enumerate(sort)] + [("i", reverse)]
    pipeline: list[dict[str, Any]] = [{"$match": await compile_search(current, search)}, {"$addFields": keys}]
    if after:
        pipeline.append({"$match": _keyset(columns, after)})
    pipeline += [
        {"$sort": {c: -1 if d else 1 for c, d in columns}},
        {"$limit": limit},
        {"$project": {"_id": 0, "i": 1, "v": 1, **{k: 1 for k in keys}}},
    ]
    return pipeline

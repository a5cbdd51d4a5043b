"""The predicate tree a search compiles to: FHIR-agnostic conditions over index entries.

The search layer turns FHIR parameters, modifiers and prefixes into these nodes; each store translates
them into one database query (SQLite: one SQL statement whatever the depth of chains; MongoDB: one find
per chained/reverse-chained level, each bounded). Policy constraints are just more nodes ANDed in, so
totals, paging and includes are right by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, Union

N = TypeVar("N")


def _hash_once(cls: type[N]) -> type[N]:
    """A node's hash computed once: a caller's policy conditions are the same tree on every request and key
    the store's caches (the compiled statement, the visibility verdicts), so rehashing it each time (~12 µs
    for a professional's document conditions) would cost more than the lookup."""
    names = tuple(f.name for f in fields(cls) if f.compare)  # type: ignore[arg-type]

    def __hash__(self) -> int:
        found = self._hash
        if found is None:
            found = hash((cls.__name__, *(getattr(self, n) for n in names)))
            object.__setattr__(self, "_hash", found)
        return found

    cls.__hash__ = __hash__  # type: ignore[assignment]
    return cls


def _cached_hash() -> Any:
    """The slot ``_hash_once`` fills (not compared, not shown)."""
    return field(default=None, init=False, compare=False, repr=False)


Field = Literal["low", "high"]
Op = Literal["<", "<=", ">", ">="]


@dataclass(frozen=True, slots=True)
class Range:
    """``entry.<field> <op> bound`` on an entry's numeric range (dates in µs, numbers, quantities)."""

    field: Field
    op: Op
    bound: float


@_hash_once
@dataclass(frozen=True, slots=True)
class Entry:
    """Some index entry of ``param`` passes every test given (all on the same entry)."""

    param: str
    or_param: str | None = None  # the entry's parameter may also be this one (``family`` / ``family:part``)
    value: str | None = None
    value_in: tuple[str, ...] | None = None  # the value is one of these
    value_prefix: str | None = None
    value_contains: str | None = None
    value_suffix: str | None = None
    system: str | None = None
    system_suffix: str | None = None
    no_system: bool = False
    ranges: tuple[Range, ...] = ()
    _hash: int | None = _cached_hash()


@dataclass(frozen=True, slots=True)
class Missing:
    """``param:missing=true|false``: the resource has no / some entry of ``param``."""

    param: str
    missing: bool


@_hash_once
@dataclass(frozen=True, slots=True)
class Not:
    condition: Condition
    _hash: int | None = _cached_hash()


@_hash_once
@dataclass(frozen=True, slots=True)
class AnyOf:
    """Disjunction; empty is false."""

    conditions: tuple[Condition, ...]
    _hash: int | None = _cached_hash()


@_hash_once
@dataclass(frozen=True, slots=True)
class AllOf:
    """Conjunction; empty is true."""

    conditions: tuple[Condition, ...]
    _hash: int | None = _cached_hash()


@dataclass(frozen=True, slots=True)
class IdIn:
    ids: tuple[str, ...]


@_hash_once
@dataclass(frozen=True, slots=True)
class Chain:
    """An entry of reference ``param`` points at ("Type/id") a live resource matching ``target``."""

    param: str
    target: Search
    _hash: int | None = _cached_hash()


@_hash_once
@dataclass(frozen=True, slots=True)
class Has:
    """``_has``: a live resource matching ``source`` refers to this one through its ``param``."""

    param: str
    source: Search
    _hash: int | None = _cached_hash()


Condition = Union[Entry, Missing, Not, AnyOf, AllOf, IdIn, Chain, Has]  # noqa: UP007 (forward refs)


@_hash_once
@dataclass(frozen=True, slots=True)
class Search:
    """Live resources of ``type`` satisfying every condition."""

    type: str
    where: tuple[Condition, ...] = ()
    _hash: int | None = _cached_hash()


@dataclass(frozen=True, slots=True)
class SortKey:
    """Sort by ``param``'s entries: the lowest ascending, the highest descending (search.html#_sort).

    ``by="value"`` compares entry values (strings, tokens, references, URIs); ``by="range"`` compares
    ranges (dates, numbers, quantities: ``low`` ascending, ``high`` descending). ``_id`` sorts by id.
    Resources without an entry sort last either way; the id breaks ties, so the order is total.
    """

    param: str
    descending: bool = False
    by: Literal["value", "range"] = "value"


# Sentinels standing in for "no entry" (sorts last) and for infinite range ends in sort keys.
MAX_TEXT = "\U0010ffff"
MAX_NUMBER = 1e308


def types_read(search: Search) -> frozenset[str]:
    """Every type whose resources ``search`` reads: its own, chain targets and ``_has`` sources (what a
    cached answer depends on)."""
    found = {search.type}
    pending: list[Condition] = list(search.where)
    while pending:
        node = pending.pop()
        if isinstance(node, Chain | Has):
            inner = node.target if isinstance(node, Chain) else node.source
            found.add(inner.type)
            pending.extend(inner.where)
        elif isinstance(node, Not):
            pending.append(node.condition)
        elif isinstance(node, AnyOf | AllOf):
            pending.extend(node.conditions)
    return frozenset(found)

"""How a broad search is answered on SQLite: from the index's densest side or by a walk in id order.

The compiler (``sqlite_query.py``) drives a search from its most selective-looking condition's id set. That
is right when the set is small, and wrong for an analyst's broad first page: ``Observation?code=…&date=ge…``
would build the set of 160,000 systolic pressures to return 50 of them, and ``Patient?_has:Observation:…``
every matching Observation's subject. When **every** condition matches many index entries (``DENSE`` or
more: counted with a bound, so the check itself stays cheap), the page walks the resource table in id order
and checks each row's own entries (``Compiler(correlated=True)``): with even 3 % of rows matching, 50 matches
are found after ~2,000 rows. One small condition is enough for the set plan. Queries carrying anything but
plain entries and ``_has`` (the access policy's chains, negations, unions) keep the set plan: their density
is unknown, and a sparse walk would visit the whole type.

The same walk gives the estimate of ``_total=estimate`` (docs/search.md "Totals"): the matches found among
the first rows in id order, scaled to the type's size — a sample of the type, since ids are UUIDv7 (creation
order), unrelated to content.
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from dataclasses import replace

from .query import Entry, Has, Search
from .sqlite_query import Compiler, _rank

#: Index entries from which a condition counts as dense (its capped count stops there).
DENSE = 2000
#: Matches an estimate samples when no page gave it its sample.
SAMPLE = 100
#: Seconds a type's size is reused for estimates.
SIZE_TTL = 30.0


def dense(conn: sqlite3.Connection, search: Search) -> bool:
    """Does every condition of ``search`` match at least ``DENSE`` index entries (plain entries and ``_has``
    only)? Token conditions are checked before ranges: a sparse range (``ge`` far in the future) has no
    index bound and is the costliest to count."""
    if not search.where:
        return False
    entries: list[tuple[str, Entry]] = []
    for condition in search.where:
        if isinstance(condition, Entry):
            if _rank(condition) <= 1:
                return False  # a reference or an identifier: few matches
            entries.append((search.type, condition))
        elif isinstance(condition, Has) and condition.source.where:
            source = condition.source
            if not all(isinstance(c, Entry) for c in source.where):
                return False
            # the sources are dense if each of their conditions is (then so, likely, are their targets)
            entries.extend((source.type, c) for c in source.where)  # type: ignore[misc]
        else:
            return False
    entries.sort(key=lambda pair: bool(pair[1].ranges))
    return all(entry_count(conn, type_, entry, DENSE) >= DENSE for type_, entry in entries)


def entry_count(conn: sqlite3.Connection, type_: str, entry: Entry, cap: int) -> int:
    """Index entries of ``type_`` matching ``entry``, counted up to ``cap`` (covering indexes only).

    A range is counted within a window of ``4 * cap`` entries of its parameter, read from where its matches
    are (the range index is ordered by ``low``: highest first for a bound on ``high`` — ``ge``, ``gt`` —,
    lowest first otherwise): a sparse range is found sparse after a bounded read instead of a walk of the
    whole parameter (an entry spanning a long range outside the window can make it look sparser than it
    is: the set plan then runs, as before)."""
    compiler = Compiler()
    if not entry.ranges:
        tests = compiler._entry_tests(entry, "s")
        sql = f"SELECT count(*) FROM (SELECT 1 FROM search_index s WHERE s.type = ? AND {' AND '.join(tests)} LIMIT ?)"
        return conn.execute(sql, [type_, *compiler.args, cap]).fetchone()[0]
    tests = compiler._entry_tests(replace(entry, ranges=()), "s")
    descending = all(r.field == "high" for r in entry.ranges)
    window = (
        f"SELECT s.low, s.high FROM search_index s WHERE s.type = ? AND {' AND '.join(tests)} AND s.low IS NOT NULL"
        f" ORDER BY s.low {'DESC' if descending else 'ASC'} LIMIT ?"
    )
    bounds = " AND ".join(f"w.{r.field} {r.op} ?" for r in entry.ranges)
    sql = f"SELECT count(*) FROM (SELECT 1 FROM ({window}) w WHERE {bounds} LIMIT ?)"
    return conn.execute(sql, [type_, *compiler.args, 4 * cap, *(r.bound for r in entry.ranges), cap]).fetchone()[0]


def exact_entry_count(conn: sqlite3.Connection, search: Search) -> int | None:
    """The number of matches of a search on one token value (``code=system|value``, ``status=final``…),
    counted on index entries alone — no resource row, no JSON: a resource has at most one entry per
    (parameter, value, system), and entries exist for live versions only. None for any other search."""
    if len(search.where) != 1 or not isinstance(entry := search.where[0], Entry):
        return None
    plain = Entry(entry.param, value=entry.value, system=entry.system, no_system=entry.no_system)
    if entry != plain or entry.value is None or (entry.system is None and not entry.no_system):
        return None
    compiler = Compiler()
    tests = compiler._entry_tests(entry, "s")
    return conn.execute(
        f"SELECT count(*) FROM search_index s WHERE s.type = ? AND {' AND '.join(tests)}", [search.type, *compiler.args]
    ).fetchone()[0]


class Densities:
    """``dense`` of recent searches, for ``SIZE_TTL`` seconds: a default page asks it for its page and again for
    its bounded count. Only the plan depends on it, never the answer."""

    def __init__(self, entries: int = 256) -> None:
        self._known: OrderedDict[tuple[Search, int], tuple[float, bool]] = OrderedDict()
        self._entries = entries

    def of(self, conn: sqlite3.Connection, search: Search) -> bool:
        now = time.monotonic()
        key = (search, DENSE)  # the threshold too: the answer is for it
        try:
            found = self._known.get(key)
        except TypeError:  # unhashable conditions: not remembered
            return dense(conn, search)
        if found is None or now - found[0] > SIZE_TTL:
            found = self._known[key] = (now, dense(conn, search))
            while len(self._known) > self._entries:
                self._known.popitem(last=False)
        return found[1]


class Sizes:
    """Live resources per type, recounted after ``SIZE_TTL`` seconds (estimates only)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, int]] = {}

    def of(self, conn: sqlite3.Connection, type_: str) -> int:
        now = time.monotonic()
        found = self._known.get(type_)
        if found is None or now - found[0] > SIZE_TTL:
            size = conn.execute("SELECT count(*) FROM resource WHERE type = ? AND deleted = 0", (type_,)).fetchone()[0]
            found = self._known[type_] = (now, size)
        return found[1]


def scaled(conn: sqlite3.Connection, sizes: Sizes, type_: str, matches: int, last_id: str) -> int:
    """``matches`` found among the rows of ``type_`` up to ``last_id`` (id order), scaled to the whole type."""
    seen = conn.execute(
        "SELECT count(*) FROM resource WHERE type = ? AND deleted = 0 AND id <= ?", (type_, last_id)
    ).fetchone()[0]
    return round(matches * sizes.of(conn, type_) / seen) if seen else matches

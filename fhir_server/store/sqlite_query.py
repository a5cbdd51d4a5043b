"""Search predicate trees (store.query) → one SQLite statement.

Entry conditions are driven from the ``search_index`` B-tree (``r.id IN (SELECT s.id …)``) rather than
correlated per row, so a selective parameter never scans the resource table; chains and ``_has`` are
subqueries, so a chained search is one statement whatever the number of matches.

The resources a chain or ``_has`` level selects are common table expressions (``WITH q1 AS (…)``), named
where they are used (``s.value IN q1``): they are uncorrelated, so SQLite plans them as it would inline
subqueries, but the statement's syntax stays flat. Nested inline, the access policy's conditions (a Binary
→ its document → the patient → their Consents) overflowed SQLite's parser stack.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from .query import MAX_NUMBER, MAX_TEXT, AllOf, AnyOf, Chain, Condition, Entry, Has, IdIn, Missing, Not, Search, SortKey

_MAX_CHAR = MAX_TEXT
VERSION_COLUMNS = "v.type, v.id, v.version, v.last_updated, v.method, v.body"


class Compiler:
    def __init__(self, parent: Compiler | None = None, correlated: bool = False) -> None:
        """``parent``: the compiler of the enclosing statement (aliases and common table expressions shared).
        ``correlated``: the owner row is already fixed (a selective condition drives): every condition is a
        per-row check through the owner index (EXISTS), chains and _has included, never a set of the whole type."""
        self._aliases = parent._aliases if parent else itertools.count()
        self._ctes: list[tuple[str, str, list[Any]]] = parent._ctes if parent else []
        self.args: list[Any] = []
        self.correlated = correlated
        #: the id subquery (sql, args) of the selective condition driving this level: chain levels compiled
        #: after it only consider the targets the driver's candidates reference
        self.driver: tuple[str, list[Any]] | None = None

    def _cte(self, body: str, args: list[Any]) -> str:
        """Name ``body`` as a common table expression of the statement (after the ones it uses)."""
        name = self._alias("q")
        self._ctes.append((name, body, args))
        return name

    def with_clause(self) -> tuple[str, list[Any]]:
        """``WITH …`` (empty without chains and ``_has``) to put before the statement, and its arguments."""
        if not self._ctes:
            return "", []
        args = [a for _, _, cte_args in self._ctes for a in cte_args]
        return "WITH " + ", ".join(f"{name} AS ({body})" for name, body, _ in self._ctes) + " ", args

    def statement(self, sql: str, args: list[Any]) -> tuple[str, list[Any]]:
        """A whole statement using this compiler's conditions: the WITH clause and its arguments first."""
        prefix, prefix_args = self.with_clause()
        return prefix + sql, [*prefix_args, *args]

    def _alias(self, prefix: str) -> str:
        return f"{prefix}{next(self._aliases)}"

    def search(self, search: Search, owner: str) -> str:
        """Conditions on the ``resource`` row aliased ``owner`` (type already bound by the caller).

        The most selective-looking condition drives (``IN``, uncorrelated); the other entry conditions are
        checked per candidate with ``EXISTS`` through the owner index. Once a selective condition (an id, a
        reference, an identifier) drives, every other condition — chains, ``_has``, negations included — is
        checked per candidate too (``correlated``), and chained levels only consider the targets the
        candidates reference: a patient's documents under the access policy never build the set of every
        authorised patient.
        """
        conds = sorted(search.where, key=_rank)
        parts: list[str] = []
        driven = selective = self.correlated
        for c in conds:
            if selective:  # a selective condition drives: every other one is checked per candidate
                parts.append(self._correlated(c, owner, search.type))
            elif driven and isinstance(c, Entry):
                parts.append(self._entry_exists(c, owner, search.type))
            else:
                mark = len(self.args)
                parts.append(self.condition(c, owner, search.type))
                if _rank(c) <= 1 and isinstance(c, (Entry, IdIn)):
                    self._drive(parts[-1], owner, self.args[mark:])
            driven = driven or isinstance(c, (Entry, IdIn, Chain, Has))
            selective = selective or _rank(c) <= 1
        return " AND ".join(f"({p})" for p in parts) if parts else "1"

    def _drive(self, sql: str, owner: str, args: list[Any]) -> None:
        """Remember the id subquery of the selective condition driving this level (``owner.id IN (…)``):
        chain levels compiled after it consider only the targets its candidates reference."""
        prefix = f"{owner}.id IN ("
        if sql.startswith(prefix) and sql.endswith(")"):
            self.driver = (sql[len(prefix) : -1], list(args))

    def _ids(self, ids: tuple[str, ...], owner: str) -> str:
        if not ids:
            return "0"
        self.args.extend(ids)
        return f"{owner}.id IN ({', '.join('?' * len(ids))})"

    def _entry_exists(self, entry: Entry, owner: str, owner_type: str) -> str:
        s = self._alias("s")
        where = self._entry_tests(entry, s)
        return f"EXISTS ({_owned(s, owner)} AND {' AND '.join(where)})"

    def condition(self, cond: Condition, owner: str, owner_type: str) -> str:
        if self.correlated:
            return self._correlated(cond, owner, owner_type)
        match cond:
            case Entry():
                return f"{owner}.id IN ({self._entry_ids(cond, owner, owner_type)})"
            case Missing(param=param, missing=missing):
                s = self._alias("s")
                self.args.extend((owner_type, param))
                ids = f"SELECT {s}.id FROM search_index {s} WHERE {s}.type = ? AND {s}.param = ?"
                return f"{owner}.id {'NOT IN' if missing else 'IN'} ({ids})"
            case Not(condition=inner):
                return f"NOT ({self.condition(inner, owner, owner_type)})"
            case AnyOf(conditions=conds):
                if not conds:
                    return "0"
                if all(_has_id_set(c) for c in conds):
                    # One IN over a UNION: SQLite drives it from the indexes, where "id IN (a) OR id IN (b)"
                    # makes it test every row of the type (e.g. a chain OR its contained-resource form).
                    return f"{owner}.id IN ({self._id_set(cond, owner, owner_type)})"
                return " OR ".join(f"({self.condition(c, owner, owner_type)})" for c in conds)
            case AllOf(conditions=conds):
                return " AND ".join(f"({self.condition(c, owner, owner_type)})" for c in conds) if conds else "1"
            case IdIn(ids=ids):
                return self._ids(ids, owner)
            case Chain(param=param, target=target):
                return self._chain(param, target, owner, owner_type)
            case Has(param=param, source=source):
                return self._has(param, source, owner, owner_type)
        raise TypeError(f"unknown search condition {cond!r}")

    def _correlated(self, cond: Condition, owner: str, owner_type: str) -> str:
        """``cond`` checked on the one row ``owner``: index lookups bounded by that row's own entries."""
        match cond:
            case Entry():
                return self._entry_exists(cond, owner, owner_type)
            case Missing(param=param, missing=missing):
                s = self._alias("s")
                self.args.append(param)
                exists = f"EXISTS ({_owned(s, owner)} AND {s}.param = ?)"
                return f"NOT {exists}" if missing else exists
            case Not(condition=inner):
                return f"NOT ({self._correlated(inner, owner, owner_type)})"
            case AnyOf(conditions=conds) if len(conds) > 2 and _plain_codes(conds):
                # one lookup of this row's entries of the parameter, checked against the list (not one per code)
                s = self._alias("s")
                self.args.append(conds[0].param)
                if conds[0].system is None:
                    self.args.extend(c.value for c in conds)
                    test = f"+{s}.value IN ({', '.join('?' * len(conds))})"
                else:
                    for c in conds:
                        self.args.extend((c.value, c.system))
                    test = f"(+{s}.value, {s}.system) IN (VALUES {', '.join('(?, ?)' for _ in conds)})"
                return f"EXISTS ({_owned(s, owner)} AND {s}.param = ? AND {test})"
            case AnyOf(conditions=conds):
                return " OR ".join(f"({self._correlated(c, owner, owner_type)})" for c in conds) if conds else "0"
            case AllOf(conditions=conds):
                return " AND ".join(f"({self._correlated(c, owner, owner_type)})" for c in conds) if conds else "1"
            case IdIn(ids=ids):
                return self._ids(ids, owner)
            case Chain(param=param, target=target) if self.driver is not None:
                # the targets the driver's candidates reference, checked once each (not once per candidate)
                s, t, s2 = self._alias("s"), self._alias("t"), self._alias("s")
                prefix = f"{target.type}/"
                driver_sql, driver_args = self.driver
                level = Compiler(self, correlated=True)
                level.args.extend(
                    (target.type, len(prefix) + 1, owner_type, *driver_args, param, prefix, prefix + _MAX_CHAR)
                )
                inner = level.search(target, t)
                referenced = (
                    f"SELECT substr({s}.value, ?) FROM search_index {s} INDEXED BY search_index_by_owner"
                    f" WHERE {s}.type = ? AND {s}.id IN ({driver_sql})"
                    f" AND {s}.param = ? AND {s}.value >= ? AND {s}.value < ?"
                )
                targets = self._cte(
                    f"SELECT {t}.type || '/' || {t}.id FROM resource {t} WHERE {t}.type = ? AND {t}.deleted = 0"
                    f" AND {t}.id IN ({referenced}) AND ({inner})",
                    level.args,
                )
                self.args.append(param)
                return f"EXISTS ({_owned(s2, owner)} AND {s2}.param = ? AND {s2}.value IN {targets})"
            case Chain(param=param, target=target):
                # this row's reference entries → the target row (primary key) → its conditions, per row
                s, t = self._alias("s"), self._alias("t")
                prefix = f"{target.type}/"
                self.args.extend((target.type, len(prefix) + 1, param, prefix, prefix + _MAX_CHAR))
                level = Compiler(self, correlated=True)
                inner = level.search(target, t)
                self.args.extend(level.args)
                return (
                    f"EXISTS (SELECT 1 FROM search_index {s} INDEXED BY search_index_by_owner"
                    f" JOIN resource {t} ON {t}.type = ? AND {t}.id = substr({s}.value, ?)"
                    f" WHERE {s}.type = {owner}.type AND {s}.id = {owner}.id AND {s}.param = ?"
                    f" AND {s}.value >= ? AND {s}.value < ? AND {t}.deleted = 0 AND ({inner}))"
                )
            case Has(param=param, source=source):
                # the sources pointing at this row (value index: type, param, value) → their conditions, per source
                s, h = self._alias("s"), self._alias("h")
                self.args.extend((source.type, param, f"{owner_type}/"))
                level = Compiler(self, correlated=True)
                inner = level.search(source, h)
                self.args.extend(level.args)
                join = f"JOIN resource {h} ON {h}.type = {s}.type AND {h}.id = {s}.id"
                return (
                    f"EXISTS (SELECT 1 FROM search_index {s} {join}"
                    f" WHERE {s}.type = ? AND {s}.param = ? AND {s}.value = ? || {owner}.id"
                    f" AND {h}.deleted = 0 AND ({inner}))"
                )
        raise TypeError(f"unknown search condition {cond!r}")

    def _id_set(self, cond: Condition, owner: str, owner_type: str) -> str:
        """The ids ``cond`` selects, as a subquery (``_has_id_set(cond)`` must hold)."""
        match cond:
            case AllOf(conditions=conds) if conds:
                return " INTERSECT ".join(f"SELECT * FROM ({self._id_set(c, owner, owner_type)})" for c in conds)
            case AnyOf(conditions=conds) if conds:
                return " UNION ".join(f"SELECT * FROM ({self._id_set(c, owner, owner_type)})" for c in conds)
            case IdIn(ids=ids):
                self.args.extend(ids)
                return "VALUES " + ", ".join("(?)" for _ in ids)
        # Every other id-set condition compiles to "<owner>.id IN (<subquery>)".
        text = self.condition(cond, owner, owner_type)
        prefix = f"{owner}.id IN ("
        assert text.startswith(prefix) and text.endswith(")"), text
        return text[len(prefix) : -1]

    def _entry_ids(self, entry: Entry, owner: str, owner_type: str) -> str:
        s = self._alias("s")
        self.args.append(owner_type)
        where = [f"{s}.type = ?", *self._entry_tests(entry, s)]
        return f"SELECT {s}.id FROM search_index {s} WHERE {' AND '.join(where)}"

    def _entry_tests(self, entry: Entry, s: str) -> list[str]:
        if entry.or_param is None:
            where = [f"{s}.param = ?"]
            self.args.append(entry.param)
        else:
            where = [f"{s}.param IN (?, ?)"]
            self.args.extend((entry.param, entry.or_param))
        if entry.value is not None:
            where.append(f"{s}.value = ?")
            self.args.append(entry.value)
        if entry.value_in is not None:
            where.append(f"{s}.value IN ({', '.join('?' * len(entry.value_in))})" if entry.value_in else "0")
            self.args.extend(entry.value_in)
        if entry.value_prefix is not None:
            where.append(f"{s}.value >= ? AND {s}.value < ?")
            self.args.extend((entry.value_prefix, entry.value_prefix + _MAX_CHAR))
        if entry.value_contains is not None:
            where.append(f"instr({s}.value, ?) > 0")
            self.args.append(entry.value_contains)
        if entry.value_suffix is not None:
            where.append(f"substr({s}.value, ?) = ?")
            self.args.extend((-len(entry.value_suffix), entry.value_suffix))
        if entry.no_system:
            where.append(f"{s}.system IS NULL")
        elif entry.system is not None:
            where.append(f"{s}.system = ?")
            self.args.append(entry.system)
        if entry.system_suffix is not None:
            where.append(f"substr({s}.system, ?) = ?")
            self.args.extend((-len(entry.system_suffix), entry.system_suffix))
        if entry.ranges:
            where.append(f"{s}.low IS NOT NULL")  # lets the planner use the partial range index
        for r in entry.ranges:
            where.append(f"{s}.{r.field} {r.op} ?")
            self.args.append(r.bound)
        return where

    def _chain(self, param: str, target: Search, owner: str, owner_type: str) -> str:
        s, t = self._alias("s"), self._alias("t")
        level = Compiler(self)
        level.args.append(target.type)
        targets = self._cte(
            f"SELECT {t}.type || '/' || {t}.id FROM resource {t}"
            f" WHERE {t}.type = ? AND {t}.deleted = 0 AND {level.search(target, t)}",
            level.args,
        )
        self.args.extend((owner_type, param))
        ids = f"SELECT {s}.id FROM search_index {s} WHERE {s}.type = ? AND {s}.param = ? AND {s}.value IN {targets}"
        return f"{owner}.id IN ({ids})"

    def _has(self, param: str, source: Search, owner: str, owner_type: str) -> str:
        s, h = self._alias("s"), self._alias("h")
        prefix = f"{owner_type}/"
        # Index entries exist only for live versions, so no deleted check is needed on the source.
        # The sources are found first, then their reference entries through the owner index.
        level = Compiler(self)
        level.args.append(source.type)
        sources = self._cte(
            f"SELECT {h}.id FROM resource {h} WHERE {h}.type = ? AND {h}.deleted = 0 AND {level.search(source, h)}",
            level.args,
        )
        self.args.extend((len(prefix) + 1, source.type, param, prefix, prefix + _MAX_CHAR))
        refs = (
            f"SELECT substr({s}.value, ?) FROM search_index {s} INDEXED BY search_index_by_owner"
            f" WHERE {s}.type = ? AND {s}.id IN {sources}"
            f" AND {s}.param = ? AND {s}.value >= ? AND {s}.value < ?"
        )
        return f"{owner}.id IN ({refs})"


def _owned(s: str, owner: str) -> str:
    """The search index rows ``s`` of the resource row ``owner`` (through the owner index)."""
    return (
        f"SELECT 1 FROM search_index {s} INDEXED BY search_index_by_owner"
        f" WHERE {s}.type = {owner}.type AND {s}.id = {owner}.id"
    )


def _plain_codes(conds: tuple[Condition, ...]) -> bool:
    """Entries of one parameter testing a value (all with a system, or all without): a code list."""
    first = conds[0]
    if not isinstance(first, Entry):
        return False
    with_system = first.system is not None
    return all(
        isinstance(c, Entry)
        and c.param == first.param
        and c.or_param is None
        and c.value is not None
        and (c.system is not None) == with_system
        and c == Entry(c.param, value=c.value, system=c.system)
        for c in conds
    )


def _has_id_set(cond: Condition) -> bool:
    """Conditions the compiler writes as "<owner>.id IN (<subquery>)" (or unions/intersections of them)."""
    match cond:
        case Entry() | Chain() | Has():
            return True
        case IdIn(ids=ids):
            return bool(ids)
        case Missing(missing=missing):
            return not missing
        case AnyOf(conditions=conds) | AllOf(conditions=conds):
            return bool(conds) and all(_has_id_set(c) for c in conds)
    return False


def _rank(cond: Condition) -> int:
    """Which condition should drive the query (lowest first; stable for ties): a fixed ranking, measured
    on the 1.1M-resource bench corpus (bench/search_bench.py)."""
    match cond:
        case IdIn():
            return 0
        case Entry(value=value, ranges=()) if value is not None and ("/" in value or cond.param.endswith("identifier")):
            return 1  # a reference or an identifier: few matches
        case Entry(value_in=values, ranges=()) if values is not None:
            return 1  # a reference (several forms or target types)
        case Entry(value=value, ranges=()) if value is not None:
            return 2
        case Entry(value_prefix=prefix) if prefix is not None:
            return 3
        case Chain():
            return 4
        case Has():
            return 5
        case Entry(ranges=ranges) if ranges:
            return 6
        case Entry():
            return 7
    return 8


def compile_search(search: Search, owner: str = "r", walk: bool = False) -> tuple[str, list[Any], Compiler]:
    """WHERE clause (after ``{owner}.type = ? AND {owner}.deleted = 0``), its arguments, and the compiler
    whose ``statement()`` puts the WITH clause before the statement using them. ``walk``: every condition
    checked on each row (a walk of the type in id order, ``sqlite_plan.py``) instead of driven from a set."""
    compiler = Compiler(correlated=walk)
    sql = compiler.search(search, owner)
    return sql, compiler.args, compiler


def sort_expression(key: SortKey) -> tuple[str, list[Any]]:
    """The per-resource sort value of ``key`` over ``resource r`` (never NULL: missing sorts last)."""
    if key.param == "_id":
        return "r.id", []
    aggregate = "max" if key.descending else "min"
    if key.by == "value":
        column, missing = "value", ("" if key.descending else MAX_TEXT)
    else:
        column, missing = ("high", -MAX_NUMBER) if key.descending else ("low", MAX_NUMBER)
    inner = (
        f"(SELECT {aggregate}(s.{column}) FROM search_index s WHERE s.type = r.type AND s.id = r.id AND s.param = ?)"
    )
    if key.by == "value":
        return f"COALESCE({inner}, ?)", [key.param, missing]
    # Clamp open range ends (±inf) so keys survive a JSON cursor.
    return f"max(min(COALESCE({inner}, ?), ?), ?)", [key.param, missing, MAX_NUMBER, -MAX_NUMBER]


def keyset_after(columns: list[tuple[str, bool]], after: tuple) -> tuple[str, list[Any]]:
    """Rows strictly after ``after`` in the order of ``columns`` ((sql, descending) pairs)."""
    ors, args = [], []
    for i, (column, descending) in enumerate(columns):
        ands = [f"{c} = ?" for c, _ in columns[:i]] + [f"{column} {'<' if descending else '>'} ?"]
        args.extend(after[: i + 1])
        ors.append(" AND ".join(ands))
    return "(" + " OR ".join(f"({o})" for o in ors) + ")", args


def include_statement(
    source_type: str, source_ids: list[str], param: str, targets: Mapping[str, tuple[Condition, ...]]
) -> tuple[str, list[Any]]:
    """Live resources that ``param`` of the given resources points at, each target type under its own
    constraints: one statement. The current version, or the version a versioned reference names (kept in the
    entry's ``low``, see ``normalize.reference_rows``); the references drive (primary-key lookups)."""
    compiler = Compiler()
    compiler.args.extend([source_type, param, *source_ids])
    refs = (
        "SELECT DISTINCT s.value AS ref, CAST(s.low AS INTEGER) AS ver FROM search_index s"
        " INDEXED BY search_index_by_owner"  # a page of sources: their own entries, never the whole parameter
        f" WHERE s.type = ? AND s.param = ? AND s.id IN ({', '.join('?' * len(source_ids))})"
    )
    by_type = []
    for type_, where in targets.items():
        compiler.args.append(type_)
        by_type.append(f"(r.type = ? AND {compiler.search(Search(type_, where), 'r')})")
    wanted = (
        "SELECT DISTINCT r.type AS t, r.id AS i, coalesce(x.ver, r.version) AS n"
        f" FROM ({refs}) x CROSS JOIN resource r"
        " ON r.type = substr(x.ref, 1, instr(x.ref, '/') - 1) AND r.id = substr(x.ref, instr(x.ref, '/') + 1)"
        f" WHERE r.deleted = 0 AND ({' OR '.join(by_type)})"
    )
    sql = (
        f"SELECT {VERSION_COLUMNS} FROM ({wanted}) m"
        " CROSS JOIN resource_version v ON v.type = m.t AND v.id = m.i AND v.version = m.n"
    )
    return compiler.statement(sql, compiler.args)


def revinclude_statement(refs: list[str], source: Search, param: str) -> tuple[str, list[Any]]:
    """Live current versions of ``source`` (type and constraints) whose ``param`` points at one of ``refs``."""
    compiler = Compiler()
    compiler.args.extend([source.type, source.type, param, *refs])
    sql = (
        f"SELECT {VERSION_COLUMNS} FROM resource r"
        " JOIN resource_version v ON v.type = r.type AND v.id = r.id AND v.version = r.version"
        " WHERE r.type = ? AND r.deleted = 0 AND r.id IN (SELECT s.id FROM search_index s"
        f" WHERE s.type = ? AND s.param = ? AND s.value IN ({', '.join('?' * len(refs))}))"
    )
    sql = f"{sql} AND {compiler.search(source, 'r')}"
    return compiler.statement(sql, compiler.args)

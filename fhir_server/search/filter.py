"""The ``_filter`` parameter (http://hl7.org/fhir/R4/search_filter.html), translated onto ordinary criteria.

A recursive-descent parser builds a small tree; each comparison ``paramPath op value`` becomes the ordinary
criterion it means (``name co "pet"`` → ``name:contains=pet``, ``birthdate ge 2014`` → ``birthdate=ge2014``,
``subject.name co "pet"`` → the chain ``subject.name:contains=pet``) and goes through
``parameters.condition``, so constraints, chains and normalization apply exactly as for ordinary parameters.
``and`` → ``AllOf``, ``or`` → ``AnyOf`` (``and`` binds tighter), ``not (…)`` → ``Not``.

Grammar subset::

    filter    = or
    or        = and *("or" and)
    and       = unary *("and" unary)
    unary     = "not" "(" filter ")" / "(" filter ")" / paramExp
    paramExp  = paramPath SP compareOp SP compValue
    paramPath = paramName *("." paramName)          ; "[filter]" sub-expressions: 400 not-supported
    compValue = JSON string / token (no whitespace, parentheses, brackets or quotes)

Keywords and operators are case-insensitive. Refused with a 400: ``ew`` and ``po``, ``[filter]`` on a path,
an operator that has no meaning for the parameter's type (``gt`` on a token, ``co`` on a date…).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import FhirError, bad_request, not_supported
from ..store.query import AllOf, AnyOf, Condition, Not
from . import registry

OPERATORS = (
    "eq",
    "ne",
    "co",
    "sw",
    "ew",
    "gt",
    "lt",
    "ge",
    "le",
    "ap",
    "sa",
    "eb",
    "pr",
    "po",
    "ss",
    "sb",
    "in",
    "ni",
    "re",
)
ORDERED = ("date", "number", "quantity")
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "ap", "sa", "eb")
_NAME_START = "_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAME_CHARS = _NAME_START + "-0123456789"
_TOKEN_STOP = ' \t\r\n()[]"'
_MAX_LENGTH = 10_000


@dataclass(frozen=True, slots=True)
class Compare:
    path: tuple[str, ...]  # a chain: ("subject", "name")
    op: str
    value: str
    position: int


@dataclass(frozen=True, slots=True)
class Logical:
    op: str  # "and" / "or"
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Negation:
    item: Node


Node = Compare | Logical | Negation


def parse(text: str) -> Node:
    """The tree of a ``_filter`` expression; a malformed one is a 400 naming the position (1-based)."""
    if len(text) > _MAX_LENGTH:
        raise bad_request(f"_filter: longer than {_MAX_LENGTH} characters")
    parser = _Parser(text)
    node = parser.disjunction()
    parser.skip_space()
    if parser.pos < len(text):
        parser.fail("')' without '('" if text[parser.pos] == ")" else "'and', 'or' or the end expected")
    return node


def condition(type_: str, text: str, scope) -> Condition:
    """``_filter=text`` on ``type_`` as a store condition (``scope``: a ``parameters.Scope``)."""
    return _translate(type_, parse(text), scope)


def criteria(text: str) -> list[tuple[str, str]]:
    """The plain criteria a filter's ``in``/``ni``/``ss``/``sb`` comparisons stand for, by operator only (for
    fetching ValueSets and CodeSystems before parsing); a malformed filter gives none (the parse reports it)."""
    try:
        node = parse(text)
    except FhirError:  # reported by the real parse
        return []
    suffix = {"in": ":in", "ni": ":not-in", "ss": ":below", "sb": ":above"}
    return [(".".join(c.path) + suffix[c.op], c.value) for c in _leaves(node) if c.op in suffix]


def _leaves(node: Node) -> list[Compare]:
    match node:
        case Compare():
            return [node]
        case Negation(item=item):
            return _leaves(item)
        case Logical(items=items):
            return [leaf for item in items for leaf in _leaves(item)]
    return []


# --- parser ---------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.pos, self.depth = text, 0, 0

    def fail(self, message: str, pos: int | None = None):
        where = self.pos if pos is None else pos
        found = self.text[where : where + 20]
        raise bad_request(
            f"_filter={self.text!r}: at position {where + 1}: {message}"
            + (f" (found {found!r})" if found else " (found the end)")
        )

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _keyword(self, word: str) -> bool:
        """``word`` (any case) next, followed by a space or a parenthesis; consumed if so."""
        self.skip_space()
        end = self.pos + len(word)
        if self.text[self.pos : end].lower() == word and (end == len(self.text) or self.text[end] in " \t\r\n("):
            self.pos = end
            return True
        return False

    def disjunction(self) -> Node:
        items = [self.conjunction()]
        while self._keyword("or"):
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else Logical("or", tuple(items))

    def conjunction(self) -> Node:
        items = [self.unary()]
        while self._keyword("and"):
            items.append(self.unary())
        return items[0] if len(items) == 1 else Logical("and", tuple(items))

    def unary(self) -> Node:
        self.skip_space()
        start = self.pos
        if self._keyword("not"):
            self.skip_space()
            if not self.text.startswith("(", self.pos):
                self.fail("'(' expected after 'not'")
            return Negation(self._group())
        self.pos = start
        if self.text.startswith("(", self.pos):
            return self._group()
        return self.comparison()

    def _group(self) -> Node:
        opened = self.pos
        self.pos += 1
        self.depth += 1
        if self.depth > 32:
            self.fail("parentheses nested deeper than 32 levels")
        inner = self.disjunction()
        self.skip_space()
        if not self.text.startswith(")", self.pos):
            self.fail(f"')' expected to close the '(' at position {opened + 1}")
        self.pos += 1
        self.depth -= 1
        return inner

    def comparison(self) -> Compare:
        start = self.pos
        path = [self._name()]
        while self.pos < len(self.text) and self.text[self.pos] in ".[":
            if self.text[self.pos] == "[":
                raise not_supported(
                    f"_filter={self.text!r}: at position {self.pos + 1}: [filter] sub-expressions on a parameter path "
                    "are not supported"
                )
            self.pos += 1
            path.append(self._name())
        if not self._space():
            self.fail("a space and an operator expected after the parameter")
        op = self.text[self.pos : self.pos + 2].lower()
        if op not in OPERATORS or (self.pos + 2 < len(self.text) and not self.text[self.pos + 2].isspace()):
            word = self.text[self.pos :].split(None, 1)[0] if self.text[self.pos :].strip() else ""
            self.fail(f"unknown operator {word!r} (expected one of {', '.join(OPERATORS)})")
        self.pos += 2
        if not self._space():
            self.fail("a space and a value expected after the operator")
        value = self._value()
        return Compare(tuple(path), op, value, start)

    def _space(self) -> bool:
        before = self.pos
        self.skip_space()
        return self.pos > before and self.pos < len(self.text)

    def _name(self) -> str:
        start = self.pos
        if self.pos >= len(self.text) or self.text[self.pos] not in _NAME_START:
            self.fail("a parameter name expected")
        while self.pos < len(self.text) and self.text[self.pos] in _NAME_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def _value(self) -> str:
        start = self.pos
        if self.text.startswith('"', self.pos):
            self.pos += 1
            while self.pos < len(self.text) and self.text[self.pos] != '"':
                self.pos += 2 if self.text[self.pos] == "\\" else 1
            if self.pos >= len(self.text):
                self.fail("unterminated string", start)
            self.pos += 1
            try:
                value = json.loads(self.text[start : self.pos])
            except ValueError:
                self.fail("invalid escape in string", start)
            if value == "":
                self.fail("empty value", start)
            return value
        while self.pos < len(self.text) and self.text[self.pos] not in _TOKEN_STOP:
            self.pos += 1
        if self.pos == start:
            self.fail("a value expected")
        return self.text[start : self.pos]


# --- translation ----------------------------------------------------------------------------------


def _translate(type_: str, node: Node, scope) -> Condition:
    match node:
        case Logical(op=op, items=items):
            parts = tuple(_translate(type_, item, scope) for item in items)
            return AllOf(parts) if op == "and" else AnyOf(parts)
        case Negation(item=item):
            return Not(_translate(type_, item, scope))
        case Compare():
            return _comparison(type_, node, scope)
    raise TypeError(f"unknown filter node {node!r}")


def _comparison(type_: str, node: Compare, scope) -> Condition:
    from .parameters import condition

    kind = _kind(type_, node.path)
    name = ".".join(node.path)
    where = f"_filter: {name} {node.op} {node.value!r} (position {node.position + 1})"
    op, value = node.op, node.value
    if op == "pr":
        if value not in ("true", "false"):
            raise bad_request(f"{where}: pr takes true or false")
        return condition(type_, f"{name}:missing", "false" if value == "true" else "true", scope)
    escaped = value.replace("\\", "\\\\").replace(",", "\\,")
    if kind in ORDERED:
        if op in _PREFIXES:
            return condition(type_, name, op + escaped, scope)
    elif op == "ne" and kind != "words":
        return Not(_comparison(type_, Compare(node.path, "eq", value, node.position), scope))
    elif kind == "string":
        modifier = {"eq": ":exact", "co": ":contains", "sw": ""}.get(op)
        if modifier is not None:
            return condition(type_, name + modifier, escaped, scope)
    elif kind == "token":
        modifier = {"eq": "", "in": ":in", "ni": ":not-in", "ss": ":below", "sb": ":above"}.get(op)
        if modifier is not None:
            return condition(type_, name + modifier, value if op in ("in", "ni") else escaped, scope)
    elif kind == "reference":
        modifier = {"eq": "", "re": "", "ss": ":below", "sb": ":above"}.get(op)
        if modifier is not None:
            return condition(type_, name + modifier, escaped, scope)
    elif kind == "uri":
        modifier = {"eq": "", "ss": ":below", "sb": ":above"}.get(op)
        if modifier is not None:
            return condition(type_, name + modifier, escaped, scope)
    elif kind == "words":  # _text / _content: the words of the value, as the ordinary parameter
        if op in ("eq", "co"):
            return condition(type_, name, escaped, scope)
    elif op == "eq":  # _id, composite, _list
        return condition(type_, name, escaped, scope)
    raise not_supported(f"{where}: operator {op!r} is not supported on {kind} parameters")


def _kind(type_: str, path: tuple[str, ...]) -> str:
    """The type of the parameter a path ends on (through its chain: the same on every target that has it)."""
    from .parameters import _definition, targets_of

    if path[0] == "_list" and len(path) == 1:
        return "special"
    definition = _definition(type_, path[0])
    if len(path) == 1:
        return definition["type"]
    if definition["type"] != "reference":
        raise bad_request(f"_filter: {'.'.join(path)}: only reference parameters can be chained")
    usable = [t for t in targets_of(type_, definition) if path[1] in ("_id",) or registry.parameter(t, path[1])]
    if not usable:
        raise bad_request(f"_filter: {'.'.join(path)}: no target type of {path[0]!r} has that search parameter")
    kinds = {_kind(t, path[1:]) for t in usable}
    if len(kinds) != 1:
        raise not_supported(f"_filter: {'.'.join(path)}: the parameter has different types on the target types")
    return kinds.pop()

"""Compile SearchParameter FHIRPath expressions to plain Python extractors.

fhirpathpy interprets an AST over wrapped nodes: tens of microseconds per expression, too slow to run
every parameter of every resource at write time. The official R4 expressions use a small subset —
paths, ``|``, ``as``/``.as()``/``.ofType()`` on choice elements, ``.where()`` with ``resolve() is T``,
``field = 'literal'`` or ``hasExtension(url)``, ``.extension(url)``, ``[n]``, ``.exists()``, ``and``,
``=``/``!=`` with literals, ``%resource`` — which compiles to closures over the parsed JSON.

Types are resolved at compile time from the R4 model shipped with fhirpathpy: a choice element
``value[x]`` becomes one ``Branch`` per possible type reading the key ``valueQuantity``,
``valueString``…, ``as``/``ofType`` keep the matching branches, and a leading type name
(``Observation.``, ``Resource.``) keeps or drops a union member. Each branch therefore knows the static
FHIR type of its values, which lets the indexer pick a normalizer once instead of sniffing every value.

Semantics follow the intent of the R4 search parameters rather than the letter of FHIRPath N1:
``x as T`` filters a collection (like ``ofType``; N1 makes it an error on more than one item),
``as(DateTime)`` means the FHIR ``dateTime`` type, ``extension(url)`` returns every matching extension
and ``resolve() is T`` is decided from the reference itself (``Patient/123`` → Patient, else
``Reference.type``), without any lookup. Union results are not de-duplicated (the indexer de-duplicates
entries). Anything outside the subset raises ``CompileError``; ``compile_param`` then falls back to
fhirpathpy, compiled once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from fhirpathpy.models import models

log = logging.getLogger(__name__)

# A step maps the focus collection to a new collection; ``root`` is the resource (for %resource).
Step = Callable[[list, dict], list]
Predicate = Callable[[Any, dict], bool]

_MODEL = models["r4"]
_PATH2TYPE: dict[str, str] = _MODEL["path2Type"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_PARENT: dict[str, str] = _MODEL["type2Parent"]
# Backbone elements have no type of their own in the model: their path is their type.
_BACKBONES = frozenset(path.rsplit(".", i)[0] for path in (*_PATH2TYPE, *_CHOICES) for i in range(1, path.count(".")))
# FHIRPath System types named in the official expressions, as the FHIR types they mean there.
_SYSTEM_TYPES = {"System.String": "string", "DateTime": "dateTime", "String": "string", "Boolean": "boolean"}


def _is_a(type_: str, ancestor: str) -> bool:
    while type_:
        if type_ == ancestor:
            return True
        type_ = _PARENT.get(type_, "")
    return False


RESOURCE_TYPES = frozenset(t for t in _PARENT if _is_a(t, "Resource") and t not in ("Resource", "DomainResource"))


class CompileError(ValueError):
    """The expression uses FHIRPath outside the compiled subset."""


@dataclass(frozen=True, slots=True)
class Branch:
    """Part of a compiled expression whose values all have one static FHIR type.

    ``type`` is a FHIR type name (``Quantity``, ``dateTime``; ``boolean`` for operators' results), a
    backbone element path (``Observation.component``), ``Resource`` for contained/entry resources, or
    ``*`` when only known at run time (fhirpathpy fallback, exists() over mixed choice types).
    ``path`` names the element definition the values come from, as the type defining it spells it
    (``Patient.gender``, ``Address.use``, ``Observation.value[x]``): what its binding is looked up by.
    """

    fn: Step
    type: str
    head: str | None = None  # the first key read from each focus item: no key, no values
    total: bool = False  # yields values from an empty focus too (exists(), literals, %resource)
    path: str | None = None  # the element read (``Patient.contact.gender``), FOCUS for a filter of its input


FOCUS = "$this"  # Branch.path of steps that keep (a part of) their input: where(), first(), as, [n]


# ---------------------------------------------------------------------------------------------------
# Parser: tokens → a small tuple AST.
# ---------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<var>%[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)|(?P<op>!=|<=|>=|[.()\[\]|=,<>]))"
)
_KEYWORDS = {"and", "or", "as", "is", "true", "false", "xor", "implies"}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise CompileError(f"cannot tokenize at {text[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "id" and value in _KEYWORDS:
            kind = "kw"
        elif kind == "id" and value.startswith("`"):
            value = value[1:-1]
        tokens.append((kind, value))
    return tokens


class _Parser:
    """Precedence climbing for: or < and < (= !=) < | < (as is) < postfix (. [] ())."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("eof", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if value is not None and token[1] != value:
            raise CompileError(f"expected {value!r}, got {token[1]!r}")
        self.pos += 1
        return token

    def parse(self) -> tuple:
        node = self.parse_or()
        if self.peek()[0] != "eof":
            raise CompileError(f"unexpected {self.peek()[1]!r}")
        return node

    def parse_or(self) -> tuple:
        node = self.parse_and()
        if self.peek() in (("kw", "or"), ("kw", "xor"), ("kw", "implies")):
            raise CompileError(f"operator {self.take()[1]!r}")
        return node

    def parse_and(self) -> tuple:
        node = self.parse_equality()
        while self.peek() == ("kw", "and"):
            self.take()
            node = ("and", node, self.parse_equality())
        return node

    def parse_equality(self) -> tuple:
        node = self.parse_union()
        while self.peek()[1] in ("=", "!="):
            op = self.take()[1]
            node = ("eq" if op == "=" else "ne", node, self.parse_union())
        if self.peek()[1] in ("<", ">", "<=", ">="):
            raise CompileError("comparison operators")
        return node

    def parse_union(self) -> tuple:
        node = self.parse_type_op()
        while self.peek()[1] == "|":
            self.take()
            node = ("union", node, self.parse_type_op())
        return node

    def parse_type_op(self) -> tuple:
        node = self.parse_postfix()
        while self.peek() in (("kw", "as"), ("kw", "is")):
            op = self.take()[1]
            node = (op, node, self.parse_type_name())
        return node

    def parse_type_name(self) -> str:
        kind, name = self.take()
        if kind != "id":
            raise CompileError(f"expected a type name, got {name!r}")
        if self.peek()[1] == ".":  # System.String, FHIR.Quantity
            self.take()
            name = f"{name}.{self.take()[1]}"
        return name

    def parse_postfix(self) -> tuple:
        node = self.parse_term()
        while True:
            if self.peek()[1] == ".":
                self.take()
                node = ("dot", node, self.parse_invocation())
            elif self.peek()[1] == "[":
                self.take()
                kind, number = self.take()
                if kind != "num" or not number.isdigit():
                    raise CompileError("only literal integer indexers")
                self.take("]")
                node = ("index", node, int(number))
            else:
                return node

    def parse_term(self) -> tuple:
        kind, value = self.peek()
        if value == "(":
            self.take()
            node = self.parse_or()
            self.take(")")
            return node
        if kind == "str":
            self.take()
            return ("lit", _unquote(value))
        if kind == "num":
            self.take()
            return ("lit", int(value) if value.isdigit() else value)
        if kind == "kw" and value in ("true", "false"):
            self.take()
            return ("lit", value == "true")
        if kind == "var":
            self.take()
            return ("var", value[1:])
        return self.parse_invocation()

    def parse_invocation(self) -> tuple:
        kind, name = self.take()
        if kind not in ("id", "kw"):  # `as`/`is` are also function names: .as(Quantity)
            raise CompileError(f"expected a name, got {name!r}")
        if self.peek()[1] != "(":
            return ("name", name)
        self.take()
        args: list[tuple] = []
        while self.peek()[1] != ")":
            args.append(self.parse_or())
            if self.peek()[1] == ",":
                self.take()
        self.take(")")
        return ("call", name, tuple(args))


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), body)


def parse(expression: str) -> tuple:
    return _Parser(expression).parse()


# ---------------------------------------------------------------------------------------------------
# Model lookups.
# ---------------------------------------------------------------------------------------------------


def _primitive(type_name: str) -> str:
    return _SYSTEM_TYPES.get(type_name, type_name)


@lru_cache(maxsize=4096)
def element_path(type_: str, name: str) -> str | None:
    """The path of element ``name`` of ``type_`` in the type that defines it: ``(Patient, language)`` →
    ``Resource.language``, ``(Age, comparator)`` → ``Quantity.comparator``; choices end in ``[x]``."""
    found, current = None, type_
    while current:  # the model repeats inherited elements under each type: keep the topmost
        path = f"{current}.{name}"
        if path in _ELSEWHERE or path in _PATH2TYPE or path in _BACKBONES:
            found = path
        elif path in _CHOICES:
            found = path + "[x]"
        elif found is not None:
            break
        current = _PARENT.get(current, "")
    return found


@lru_cache(maxsize=4096)
def element(type_: str, name: str) -> tuple[tuple[str, str], ...] | None:
    """The (JSON key, FHIR type) pairs of element ``name`` of ``type_``: several for a choice element."""
    current: str | None = type_
    while current:
        path = f"{current}.{name}"
        if path in _ELSEWHERE:  # contentReference: Questionnaire.item.item is a Questionnaire.item
            return ((name, _ELSEWHERE[path]),)
        if path in _CHOICES:
            return tuple((name + suffix, _primitive(_PATH2TYPE[path + suffix])) for suffix in _CHOICES[path])
        if path in _PATH2TYPE:
            return ((name, _primitive(_PATH2TYPE[path])),)
        if path in _BACKBONES:
            return ((name, path),)
        current = _PARENT.get(current)
    return None


def is_a(type_: str, ancestor: str) -> bool:
    """Static subtype test; a backbone path is a BackboneElement.

    Primitives match exactly: ``(ConceptMap.source as uri)`` means sourceUri, not sourceCanonical
    (canonical specializes uri, but the parameters use ``as`` to pick one choice type).
    """
    ancestor = _primitive(ancestor)
    if type_[:1].islower() or ancestor[:1].islower():
        return type_ == ancestor
    if type_ in _BACKBONES:
        return ancestor in (type_, "BackboneElement", "Element")
    return _is_a(type_, ancestor)


# ---------------------------------------------------------------------------------------------------
# Run-time helpers.
# ---------------------------------------------------------------------------------------------------


def literal_type(literal: str) -> str | None:
    """The ``Type`` of ``[base/]Type/id[/_history/v]`` when it is an R4 resource type."""
    cut = literal.find("/_history/")
    if cut > 0:
        literal = literal[:cut]
    parts = literal.rsplit("/", 2)
    return parts[-2] if len(parts) >= 2 and parts[-2] in RESOURCE_TYPES and parts[-1] else None


def reference_type(reference: Any) -> str | None:
    """The target type of a Reference, read from its literal reference, else from ``type``.

    What ``resolve() is T`` tests: nothing is looked up, so a ``urn:uuid:`` reference without
    ``type`` is of no type.
    """
    if reference.__class__ is not dict:
        return None
    literal = reference.get("reference")
    found = literal_type(literal) if literal.__class__ is str else None
    if found is None:
        declared = reference.get("type")
        return declared if declared.__class__ is str else None
    return found


def _chain(steps: list[Step]) -> Step:
    if len(steps) == 1:
        return steps[0]
    first, *rest = steps

    def run(items: list, root: dict) -> list:
        items = first(items, root)
        for step in rest:
            if not items:
                break
            items = step(items, root)
        return items

    return run


def _identity(items: list, root: dict) -> list:
    return items


def _nav(key: str) -> Step:
    def step(items: list, root: dict) -> list:
        out: list = []
        for item in items:
            if item.__class__ is dict:
                value = item.get(key)
                if value is None:
                    continue
                if value.__class__ is list:
                    out.extend(value)
                    if None in value:  # primitive arrays padded for their _element extensions
                        out = [v for v in out if v is not None]
                else:
                    out.append(value)
        return out

    return step


def _filter(pred: Predicate) -> Step:
    def step(items: list, root: dict) -> list:
        return [item for item in items if pred(item, root)]

    return step


# ---------------------------------------------------------------------------------------------------
# Compiler: (AST, input type) → branches.
# ---------------------------------------------------------------------------------------------------


def _merge(branches: list[Branch]) -> Step:
    """One step producing the union of several branches (their static types are dropped)."""
    if len(branches) == 1:
        return branches[0].fn
    fns = [b.fn for b in branches]

    def step(items: list, root: dict) -> list:
        out: list = []
        for fn in fns:
            out.extend(fn(items, root))
        return out

    return step


def then(first: Branch, second: Branch) -> Branch:
    """``second`` applied to the values of ``first``."""
    path = first.path if second.path == FOCUS else second.path
    if first.fn is _identity:
        return second if path == second.path else replace(second, path=path)
    if not second.total:
        return Branch(_chain([first.fn, second.fn]), second.type, first.head, first.total, path)
    first_fn, second_fn = first.fn, second.fn
    return Branch(lambda items, root: second_fn(first_fn(items, root), root), second.type, None, True, path)


_AGGREGATES = frozenset({"exists", "first"})


def compile_node(node: tuple, in_type: str, root_type: str) -> list[Branch]:
    """Branches computing ``node`` on a focus collection of static type ``in_type``."""
    kind = node[0]
    if kind == "name":
        return _compile_name(node[1], in_type)
    if kind == "dot":
        lefts = compile_node(node[1], in_type, root_type)
        if node[2][0] == "call" and node[2][1] in _AGGREGATES and len(lefts) > 1:
            # exists()/first() see the whole collection, not each choice branch separately.
            types, paths = {b.type for b in lefts}, {b.path for b in lefts}
            lefts = [
                Branch(
                    _merge(lefts),
                    types.pop() if len(types) == 1 else "*",
                    path=paths.pop() if len(paths) == 1 else None,
                )
            ]
        out = []
        for left in lefts:
            out.extend(then(left, right) for right in compile_node(node[2], left.type, root_type))
        return out
    if kind == "union":
        return compile_node(node[1], in_type, root_type) + compile_node(node[2], in_type, root_type)
    if kind == "as":
        return _compile_as(compile_node(node[1], in_type, root_type), node[2])
    if kind == "call":
        return _compile_call(node[1], node[2], in_type, root_type)
    if kind == "index":
        return _compile_index(compile_node(node[1], in_type, root_type), node[2])
    if kind == "var" and node[1] == "resource":
        return [Branch(lambda items, root: [root], root_type, None, True)]
    if kind in ("and", "eq", "ne", "lit"):
        return [Branch(_compile_value(node, in_type, root_type), "boolean", None, True)]
    raise CompileError(f"unsupported {kind}")


def _compile_name(name: str, in_type: str) -> list[Branch]:
    if in_type == "Resource" or in_type == "*":
        raise CompileError(f"navigation into a run-time typed {in_type}: {name}")
    found = element(in_type, name)
    if found is not None:
        path = element_path(in_type, name)
        return [Branch(_nav(key), type_, key, path=path) for key, type_ in found]
    if name in _PARENT or name in ("Resource", "DomainResource"):
        # A leading type name: the focus if it is of that type; else nothing (drops union members
        # naming other resource types).
        return [Branch(_identity, in_type, path=FOCUS)] if is_a(in_type, name) else []
    raise CompileError(f"{in_type} has no element {name!r}")


def _compile_as(branches: list[Branch], type_name: str) -> list[Branch]:
    type_name = _primitive(type_name.removeprefix("FHIR."))
    out = []
    for b in branches:
        if is_a(b.type, type_name):
            out.append(b)
        elif b.type == "Resource" and type_name in RESOURCE_TYPES:
            is_rt = _filter(lambda r, _root, rt=type_name: r.__class__ is dict and r.get("resourceType") == rt)
            out.append(Branch(_chain([b.fn, is_rt]), type_name, b.head, path=b.path))
    return out


def _compile_index(branches: list[Branch], index: int) -> list[Branch]:
    if len(branches) != 1:
        raise CompileError("indexer over a choice/union")
    fn = branches[0].fn

    def step(items: list, root: dict) -> list:
        found = fn(items, root)
        return found[index : index + 1]

    return [Branch(step, branches[0].type, branches[0].head, path=branches[0].path)]


def _compile_call(name: str, args: tuple, in_type: str, root_type: str) -> list[Branch]:
    if name in ("as", "ofType") and len(args) == 1 and args[0][0] == "name":
        return _compile_as([Branch(_identity, in_type, path=FOCUS)], args[0][1])
    if name == "where" and len(args) == 1:
        return [Branch(_filter(_compile_predicate(args[0], in_type, root_type)), in_type, path=FOCUS)]
    if name == "extension" and len(args) == 1 and args[0][0] == "lit":
        url = args[0][1]
        ext = _nav("extension")
        matching = _filter(lambda e, _root: e.__class__ is dict and e.get("url") == url)
        return [Branch(_chain([ext, matching]), "Extension", "extension")]
    if name == "exists" and not args:
        return [Branch(lambda items, root: [bool(items)], "boolean", None, True)]
    if name == "first" and not args:
        return [Branch(lambda items, root: items[:1], in_type, path=FOCUS)]
    raise CompileError(f"function {name}() with {len(args)} argument(s)")


def _compile_predicate(node: tuple, in_type: str, root_type: str) -> Predicate:
    """A ``where()`` criterion on one item; the common shapes get direct tests."""
    if node[0] == "is" and node[1] == ("call", "resolve", ()):
        target = node[2]
        if target in ("Resource", "DomainResource"):
            return lambda item, root: reference_type(item) is not None
        return lambda item, root: reference_type(item) == target
    if node[0] == "call" and node[1] == "hasExtension" and len(node[2]) == 1 and node[2][0][0] == "lit":
        url = node[2][0][1]
        return lambda item, root: (
            item.__class__ is dict
            and any(e.__class__ is dict and e.get("url") == url for e in item.get("extension") or ())
        )
    if node[0] == "eq" and node[2][0] == "lit" and node[1][0] == "name":
        branches = _compile_name(node[1][1], in_type)
        if len(branches) == 1 and branches[0].fn is not _identity:
            key, literal = node[1][1], node[2][1]
            return lambda item, root: item.__class__ is dict and item.get(key) == literal
    fn = _compile_value(node, in_type, root_type)
    return lambda item, root: fn([item], root) == [True]


def _compile_value(node: tuple, in_type: str, root_type: str) -> Step:
    """Boolean/literal operators: three-valued logic on singletons, empty propagates."""
    kind = node[0]
    if kind == "lit":
        literal = node[1]
        return lambda items, root: [literal]
    if kind in ("eq", "ne"):
        left = _merge_or_empty(compile_node(node[1], in_type, root_type))
        right = _merge_or_empty(compile_node(node[2], in_type, root_type))
        negate = kind == "ne"

        def equality(items: list, root: dict) -> list:
            a, b = left(items, root), right(items, root)
            if not a or not b:
                return []
            return [(a == b) != negate]

        return equality
    if kind == "and":
        left = _merge_or_empty(compile_node(node[1], in_type, root_type))
        right = _merge_or_empty(compile_node(node[2], in_type, root_type))

        def conjunction(items: list, root: dict) -> list:
            a, b = left(items, root), right(items, root)
            if a == [False] or b == [False]:
                return [False]
            if a == [True] and b == [True]:
                return [True]
            return []

        return conjunction
    return _merge_or_empty(compile_node(node, in_type, root_type))


def _merge_or_empty(branches: list[Branch]) -> Step:
    return _merge(branches) if branches else (lambda items, root: [])


def compile_expression(expression: str, in_type: str, root_type: str | None = None) -> list[Branch]:
    """Compile ``expression`` for a focus of type ``in_type`` (the resource type at the top level)."""
    return compile_node(parse(expression), in_type, root_type or in_type)


# ---------------------------------------------------------------------------------------------------
# fhirpathpy fallback.
# ---------------------------------------------------------------------------------------------------


def _has_extension(inputs: list, url: str) -> list:
    return [
        any(isinstance(e, dict) and e.get("url") == url for e in (i.get("extension") or ()))
        for i in inputs
        if isinstance(i, dict)
    ]


FHIRPATHPY_FUNCTIONS = {
    "hasExtension": {"fn": _has_extension, "arity": {1: ["String"]}},
}


def fallback_branch(expression: str, in_type: str) -> Branch:
    """The expression run by fhirpathpy (compiled once), its values typed at run time."""
    import fhirpathpy  # the slow path only
    from fhirpathpy.engine.nodes import ResourceNode

    fn = fhirpathpy.compile(expression, _MODEL, {"userInvocationTable": FHIRPATHPY_FUNCTIONS})
    top_level = in_type in RESOURCE_TYPES
    warned: list[bool] = []

    def step(items: list, root: dict) -> list:
        out: list = []
        for item in items:
            focus = item if top_level else ResourceNode.create_node(item, in_type)
            try:
                out.extend(v for v in fn(focus, {"resource": root}) if v is not None)
            except Exception:  # one bad expression must not fail every write
                if not warned:
                    warned.append(True)
                    log.warning("fhirpathpy failed on %r for %s", expression, in_type, exc_info=True)
        return out

    return Branch(step, "*")


# (expression, focus type) → why it is run by fhirpathpy: what the compiler does not cover.
FALLBACKS: dict[tuple[str, str], str] = {}


@lru_cache(maxsize=8192)
def compile_param(expression: str, in_type: str, root_type: str | None = None) -> tuple[Branch, ...]:
    """Compiled branches, or a single fhirpathpy branch when the expression is outside the subset."""
    try:
        return tuple(compile_expression(expression, in_type, root_type))
    except CompileError as exc:
        log.info("FHIRPath %r on %s not compiled (%s): fhirpathpy fallback", expression, in_type, exc)
        FALLBACKS[(expression, in_type)] = str(exc)
        return (fallback_branch(expression, in_type),)


def evaluate(branches: tuple[Branch, ...] | list[Branch], focus: list, root: dict) -> list:
    """All values of the branches, in branch order (tests and composite parameters)."""
    out: list = []
    for branch in branches:
        out.extend(branch.fn(focus, root))
    return out

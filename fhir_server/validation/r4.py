"""Structural validator for R4 resource types the R4B models cannot check.

Driven by ``r4_structures.json``, generated from the official R4 StructureDefinition snapshots by
``tools/build_r4_structures.py``. It checks what the JSON can tell without terminology or invariants:
unknown elements (including ``_x`` siblings and choice names such as ``valueString``), cardinality, arrays vs
single values, the JSON type and R4 regex of primitives, nested datatypes and backbone elements, and hands
nested resources to the dispatcher.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import Issue
from ._common import Loc, Nested, describe, expression, is_base64, json_type, make_issue

_DATA = Path(__file__).with_name("r4_structures.json")
_INT32 = (-(2**31), 2**31 - 1)


class Primitive(NamedTuple):
    name: str
    kind: str  # JSON kind: "boolean", "integer", "decimal" or "string"
    regex: re.Pattern | None


class Elem(NamedTuple):
    type: str
    is_list: bool
    group: str  # choice group ("value" for valueString), "" if not a choice
    attr: bool  # JSON attribute without a ``_x`` sibling (Element.id, Extension.url, Resource.id)
    primitive: Primitive | None


class Node(NamedTuple):
    elements: dict[str, Elem]
    required: tuple[str, ...]
    required_groups: tuple[str, ...]


@cache
def _structures() -> tuple[dict[str, Node], frozenset[str]]:
    data = json.loads(_DATA.read_text())
    primitives = {
        # re.ASCII: the R4 regexes are XML Schema ones, where \s and \S are about ASCII whitespace only
        name: Primitive(name, kind, re.compile(regex, re.ASCII) if regex else None)
        for name, (kind, regex) in data["primitives"].items()
    }
    nodes = {}
    for type_name, elements in data["types"].items():
        elems = {
            name: Elem(typ, hi != 1, group, bool(attr), primitives.get(typ))
            for name, (typ, _lo, hi, group, attr) in elements.items()
        }
        required = tuple(n for n, e in elements.items() if e[1] > 0 and not e[3])
        groups = tuple(sorted({e[3] for e in elements.values() if e[1] > 0 and e[3]}))
        nodes[type_name] = Node(elems, required, groups)
    return nodes, frozenset(data["resources"])


def structural_types() -> frozenset[str]:
    """Resource types validated here rather than with the R4B models."""
    return _structures()[1]


def _matches(prim: Primitive, value: str) -> bool:
    return prim.regex is None or prim.regex.fullmatch(value) is not None


class _Walk:
    __slots__ = ("issues", "nested", "nodes", "root")

    def __init__(self, root: str, nested: Nested) -> None:
        self.root = root
        self.nested = nested
        self.nodes = _structures()[0]
        self.issues: list[Issue] = []

    def add(self, code: str, message: str, loc: Loc, *, raw_last: bool = False) -> None:
        self.issues.append(make_issue(code, message, self.root, loc, raw_last=raw_last))

    def obj(self, value: Any, type_name: str, loc: Loc, *, resource: bool = False) -> None:
        if type(value) is not dict:
            self.add("structure", f"Expected an object ({type_name}) but found {json_type(value)}", loc)
            return
        if not value:
            self.add("structure", "Empty object (FHIR JSON has no empty objects)", loc)
            return
        node = self.nodes[type_name]
        groups: dict[str, str] = {}
        for key, item in value.items():
            if key[:1] == "_":
                self.extension(value, key, item, node, loc, groups)
                continue
            elem = node.elements.get(key)
            if elem is None:
                if not (resource and key == "resourceType"):
                    self.add("structure", f"Unknown element '{key}'", (*loc, key), raw_last=True)
                continue
            if elem.group:
                self.choice(groups, elem.group, key, loc)
            self.element(value, key, item, elem, (*loc, key))
        for name in node.required:
            if name not in value and "_" + name not in value:
                self.add("required", f"Missing required element '{name}'", (*loc, name))
        for group in node.required_groups:
            if group not in groups:
                self.add("required", f"Missing required element '{group}[x]'", (*loc, group))

    def choice(self, groups: dict[str, str], group: str, key: str, loc: Loc) -> None:
        other = groups.setdefault(group, key)
        if other != key:
            self.add("structure", f"Only one of {group}[x] may be present: {other}, {key}", (*loc, key))

    def element(self, parent: dict, key: str, value: Any, elem: Elem, here: Loc) -> None:
        if value is None:
            self.add("structure", f"Element '{key}' is null (FHIR JSON has no null values)", here)
        elif not elem.is_list:
            if type(value) is list:
                self.add("structure", f"Element '{key}' must be a single value, not an array", here)
            else:
                self.value(value, elem, here)
        elif type(value) is not list:
            self.add("structure", f"Element '{key}' must be an array", here)
        elif not value:
            self.add("structure", f"Array '{key}' is empty (FHIR JSON has no empty arrays)", here)
        else:
            ext = parent.get("_" + key) if elem.primitive else None
            for i, item in enumerate(value):
                if item is not None:
                    self.value(item, elem, (*here, i))
                elif not (type(ext) is list and i < len(ext) and ext[i] is not None):
                    self.add("structure", f"Null in array '{key}' without a matching '_{key}' value", (*here, i))

    def value(self, value: Any, elem: Elem, loc: Loc) -> None:
        if elem.primitive is not None:
            self.primitive(value, elem.primitive, loc)
        elif elem.type == "Resource":
            if type(value) is dict and value:
                self.issues.extend(self.nested(value, expression(self.root, loc)))
            else:
                self.add("structure", "Expected a resource (a JSON object with resourceType)", loc)
        else:
            self.obj(value, elem.type, loc)

    def primitive(self, value: Any, prim: Primitive, loc: Loc) -> None:
        kind = prim.kind
        if kind == "string":
            if type(value) is not str:
                self.wrong_type(value, "a string", prim, loc)
            elif not value:
                self.add("value", "Empty string (FHIR JSON has no empty strings)", loc)
            elif not (is_base64(value) if prim.name == "base64Binary" else _matches(prim, value)):
                self.add("value", f"Invalid {prim.name} value {describe(value)}", loc)
            elif prim.name == "xhtml" and not value.lstrip().startswith("<div"):
                self.add("value", "Narrative div must be an XHTML <div> element", loc)
        elif kind == "boolean":
            if type(value) is not bool:
                self.wrong_type(value, "a boolean", prim, loc)
        elif kind == "integer":
            if type(value) is not int:
                self.wrong_type(value, "an integer", prim, loc)
            elif not (_INT32[0] <= value <= _INT32[1]) or (prim.regex and not prim.regex.fullmatch(str(value))):
                self.add("value", f"Invalid {prim.name} value {value}", loc)
        elif type(value) is bool or not isinstance(value, Decimal | int | float):
            self.wrong_type(value, "a number", prim, loc)
        elif not Decimal(value).is_finite():
            self.add("value", f"Invalid decimal value {value}", loc)

    def wrong_type(self, value: Any, expected: str, prim: Primitive, loc: Loc) -> None:
        what = expected if expected.endswith(prim.name) else f"{expected} ({prim.name})"
        message = f"Expected {what} but found {json_type(value)} {describe(value)}"
        self.add("structure", message, loc)

    def extension(self, parent: dict, key: str, value: Any, node: Node, loc: Loc, groups: dict) -> None:
        """A primitive's ``_x`` sibling: an Element (id, extension), or an array lined up with ``x``."""
        base = key[1:]
        elem = node.elements.get(base)
        here = (*loc, key)
        if elem is None or elem.primitive is None or elem.attr:
            self.add("structure", f"Unknown element '{key}'", here, raw_last=True)
            return
        if elem.group:
            self.choice(groups, elem.group, base, loc)
        if value is None:
            self.add("structure", f"Element '{key}' is null (FHIR JSON has no null values)", here)
        elif not elem.is_list:
            self.obj(value, "Element", here)
        elif type(value) is not list or not value:
            self.add("structure", f"Element '{key}' must be a non-empty array", here, raw_last=True)
        else:
            other = parent.get(base)
            if other is not None and (type(other) is not list or len(other) != len(value)):
                self.add("structure", f"Array '{key}' does not line up with '{base}'", here, raw_last=True)
                other = None
            for i, item in enumerate(value):
                if item is not None:
                    self.obj(item, "Element", (*here, i))
                elif not (other and other[i] is not None):
                    self.add("structure", f"Null in '{key}' without a matching '{base}' value", (*here, i))


def check(resource: dict, root: str, nested: Nested) -> list[Issue]:
    """Issues of one resource of a type listed in ``structural_types()``."""
    walk = _Walk(root, nested)
    walk.obj(resource, resource["resourceType"], (), resource=True)
    return walk.issues

"""Required terminology bindings: an element bound ``required`` in R4 holds a code of its value set.

Driven by ``required_bindings.json`` (``tools/build_required_bindings.py``: the official R4
StructureDefinitions and ValueSets, expanded at build time). One pass over the JSON per resource, following
a table per type and backbone element: no FHIRPath, no model. The rule:

* a ``code`` element (``Patient.gender``, ``ContactPoint.system``...) holds one of the value set's codes,
  whatever their CodeSystem (a ``code`` carries no system);
* a ``Coding`` or ``CodeableConcept`` element: each coding whose ``system`` is one the value set draws from
  has a code of it. Codings of other systems, or without one, are left alone (the binding does not say
  what they may be: we do not guess);
* codes compare exactly, except for CodeSystems not declared case-sensitive (R4: accept any case then);
* value sets these sources cannot expand (UCUM, mime types, ISO 4217...) are not checked at all: the
  generator lists them with the reason;
* extensions are walked as well (``Extension.valueQuantity.comparator`` is ``Quantity.comparator``);
  nested resources (contained, Bundle entries, Parameters) are not: the validator checks each on its own.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import Issue
from ._common import Loc, describe, make_issue

_DATA = Path(__file__).with_name("required_bindings.json")
_SHOWN = 8  # codes listed in a message


class Allowed(NamedTuple):
    url: str
    codes: frozenset[str]  # of every system: what a ``code`` element may hold
    by_system: dict[str, frozenset[str]]  # what a coding of that system may hold
    folded: dict[str, frozenset[str]]  # casefolded codes of the case-insensitive systems
    shown: str  # the first few codes, for messages

    def has(self, code: str, system: str | None = None) -> bool:
        if code in (self.codes if system is None else self.by_system[system]):
            return True
        if not self.folded:
            return False
        low = code.casefold()
        return any(low in codes for s, codes in self.folded.items() if system in (None, s))


# How an element is read: walked only, or bound (its value checked, then walked if it is complex).
WALK, CODE, CONCEPT, CODING = range(4)

# JSON name (``_x`` primitive siblings included) -> (kind, table of the element's type or None, binding or None)
Table = dict[str, tuple[int, "Table | None", Allowed | None]]


def _allowed(url: str, systems: dict[str, list[str]], insensitive: set[str]) -> Allowed:
    every = [code for codes in systems.values() for code in codes]
    shown = ", ".join(every[:_SHOWN]) + (f", ... ({len(every)} codes)" if len(every) > _SHOWN else "")
    folded = {s: frozenset(c.casefold() for c in codes) for s, codes in systems.items() if s in insensitive}
    by_system = {system: frozenset(codes) for system, codes in systems.items()}
    return Allowed(url, frozenset(every), by_system, folded, shown)


@cache
def _tables() -> dict[str, Table]:
    data = json.loads(_DATA.read_text())
    insensitive = set(data["caseInsensitive"])
    allowed = {url: _allowed(url, systems, insensitive) for url, systems in data["valueSets"].items()}
    tables: dict[str, Table] = {name: {} for name in data["types"]}  # filled below: the graph has cycles
    for name, elements in data["types"].items():
        table = tables[name]
        for key, spec in elements.items():
            if type(spec) is str:  # walked only
                table[key] = (WALK, tables[spec], None)
                continue
            child, vs = spec
            kind = CONCEPT if child == "CodeableConcept" else CODING if child == "Coding" else CODE
            table[key] = (kind, tables.get(child), allowed[vs])
    return tables


def warm() -> None:
    _tables()


class _Walk:
    __slots__ = ("issues", "root")

    def __init__(self, root: str) -> None:
        self.root = root
        self.issues: list[Issue] = []

    def obj(self, obj: dict, table: Table, loc: Loc) -> None:
        # The hot loop (every complex value of every resource): walks and single codes inline.
        for key, value in obj.items():
            spec = table.get(key)
            if spec is None:
                continue  # a primitive without binding, or unknown (the validator reports those)
            kind, child, allowed = spec
            if kind == WALK:
                if type(value) is dict:
                    self.obj(value, child, (*loc, key))  # type: ignore[arg-type]
                elif type(value) is list:
                    for i, item in enumerate(value):
                        if type(item) is dict:
                            self.obj(item, child, (*loc, key, i))  # type: ignore[arg-type]
            elif kind == CODE and type(value) is str:
                # the set lookup first: ``has`` (a call) only for what is not there as sent
                if value not in allowed.codes and not allowed.has(value):  # type: ignore[union-attr]
                    self.bad(value, allowed, (*loc, key))  # type: ignore[arg-type]
            else:
                self.bound(value, spec, (*loc, key))

    def bound(self, value: Any, spec: tuple, here: Loc) -> None:
        if type(value) is list:
            for i, item in enumerate(value):
                self.value(item, spec, (*here, i))
        else:
            self.value(value, spec, here)

    def value(self, value: Any, spec: tuple, here: Loc) -> None:
        kind, table, allowed = spec
        if kind == CODE:
            # not a string: a structural issue, reported by the validator
            if type(value) is str and not allowed.has(value):
                self.bad(value, allowed, here)
            return
        if type(value) is not dict:
            return
        if kind == CONCEPT:
            codings = value.get("coding")
            if type(codings) is list:
                for i, coding in enumerate(codings):
                    if type(coding) is dict:
                        self.coding(coding, allowed, (*here, "coding", i))
        else:
            self.coding(value, allowed, here)
        if table is not None:
            self.obj(value, table, here)

    def coding(self, coding: dict, allowed: Allowed, here: Loc) -> None:
        system, code = coding.get("system"), coding.get("code")
        if system in allowed.by_system and type(code) is str and not allowed.has(code, system):
            self.bad(code, allowed, (*here, "code"), system)

    def bad(self, code: str, allowed: Allowed, here: Loc, system: str | None = None) -> None:
        of = f" of system {system}" if system else ""
        message = (
            f"Code {describe(code)}{of} is not in the value set {allowed.url} (required binding):"
            f" expected one of {allowed.shown}"
        )
        self.issues.append(make_issue("code-invalid", message, self.root, here))


def check(resource: dict, root: str) -> list[Issue]:
    """Required-binding issues of ``resource`` itself (not of the resources nested in it)."""
    tables = _tables()
    table = tables.get(resource.get("resourceType"))  # type: ignore[arg-type]
    if table is None:
        return []
    walk = _Walk(root)
    walk.obj(resource, table, ())
    return walk.issues

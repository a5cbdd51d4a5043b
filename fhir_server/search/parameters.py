"""FHIR search parameters → the store's predicate tree (http://hl7.org/fhir/R4/search.html).

Strict by design: an unknown parameter, an unsupported modifier or a malformed value is a 400 naming
it. Ignoring one would silently return unfiltered data, the weak spot of many servers.
Index entry encoding (what each parameter type matches against) is described in ``indexing``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from urllib.parse import urlsplit

from ..errors import bad_request, not_supported
from ..instant import date_range
from ..store.query import AllOf, AnyOf, Chain, Condition, Entry, Has, IdIn, Missing, Not, Range, Search
from . import registry
from .indexing import contained_param, has_name_parts
from .normalize import NAME_SEPARATORS, fold, number_range, words
from .valuesets import Code, Hierarchy, subsumed

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MAX_CHAIN_DEPTH = 4
_MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "of-type", "missing", "in", "not-in", "below", "above"},
    "reference": {"identifier", "missing"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"above", "below", "missing"},
    "composite": {"missing"},
}


def no_constraints(type_: str) -> tuple[Condition, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class Scope:
    """What parsing needs beyond the parameters: this server's base URL (absolute references), the
    caller's access constraints (applied to chained and ``_has`` levels too, so a hidden resource can
    never be probed through a chain), and the current chain depth."""

    base: str = ""
    constraints: Callable[[str], tuple[Condition, ...]] = no_constraints
    depth: int = 0
    valuesets: Mapping[str, tuple[Code, ...]] = field(default_factory=dict)  # url → codes, for :in/:not-in
    codesystems: Mapping[str, Hierarchy] = field(default_factory=dict)  # url → is-a links, for :below/:above
    # Store lookups a search needs, made by the caller within its own constraints: a first parse records
    # them in ``wanted``, the real parse reads the answers.
    # - ("id", id, targets): a bare id given to a reference with several target types (``subject=23``);
    #   ``found``: id → the types holding it (several: the search is ambiguous, a 400).
    # - ("tree", type, id, "below"|"above"): reference ``:below``/``:above`` (``location:below=42``);
    #   ``linked``: (type, id, direction) → the ids down / up the type's hierarchy, ``id`` included.
    wanted: set[tuple] | None = None
    found: Mapping[str, frozenset[str]] | None = None
    linked: Mapping[tuple[str, str, str], tuple[str, ...]] | None = None

    def deeper(self) -> Scope:
        if self.depth >= MAX_CHAIN_DEPTH:
            raise bad_request(f"Chains and _has nested deeper than {MAX_CHAIN_DEPTH} levels are not supported")
        return replace(self, depth=self.depth + 1)


def parse(type_: str, pairs: list[tuple[str, str]], scope: Scope = Scope()) -> Search:
    """The conjunction of every (name, value) pair: repeated names AND, commas inside a value OR."""
    return Search(type_, tuple(condition(type_, name, value, scope) for name, value in pairs if value != ""))


def _linked(type_: str, pairs: list[tuple[str, str]], scope: Scope) -> Search:
    """A chained / ``_has`` level: its own criteria and the caller's constraints on that type."""
    inner = scope.deeper()
    return Search(type_, parse(type_, pairs, inner).where + scope.constraints(type_))


def condition(type_: str, name: str, value: str, scope: Scope = Scope()) -> Condition:
    if name.startswith("_has:"):
        return _has(name, value, scope)
    if name == "_list":
        return _list(value, scope)
    if name == "_filter":
        from . import filter as filter_

        return filter_.condition(type_, value, scope)
    head, _, chain_rest = name.partition(".")
    code, _, modifier = head.partition(":")
    definition = _definition(type_, code)
    kind = definition["type"]
    if chain_rest:
        return _chain(type_, definition, modifier, chain_rest, value, scope)
    if modifier == "missing":
        if value not in ("true", "false"):
            raise bad_request(f"{name}={value!r}: :missing takes true or false")
        return Missing(code, value == "true")
    if kind == "reference" and modifier in ("below", "above"):
        return _any(_reference_hierarchy(type_, definition, v, modifier, scope) for v in _split(value))
    if kind == "reference" and modifier and modifier != "identifier":
        if modifier not in definition.get("target", ()) and modifier not in registry.by_type():
            raise bad_request(f"{name}: {modifier!r} is not a resource type this reference can target")
        return _any(_reference(type_, definition, value, scope, modifier) for value in _split(value))
    allowed = _MODIFIERS.get(kind, set())
    if modifier and modifier not in allowed:
        raise not_supported(f"Modifier :{modifier} is not supported for {kind} parameter {code!r}")
    if modifier in ("in", "not-in"):
        return _in_valueset(code, value, modifier, scope)
    if modifier in ("below", "above") and kind == "token":
        return _any(_subsumption(definition, v, modifier, scope) for v in _split(value))
    values = _split(value)
    if kind not in ("token", "quantity", "composite"):  # only these give "|" or "$" a meaning
        values = [_unescape(v) for v in values]
    if modifier == "not":
        return Not(_any(_token(code, v, None) for v in values))
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise not_supported(f"Search parameter {code!r} of type {kind} is not supported")
    return _any(builder(definition, v, modifier, scope, type_) for v in values)


def valueset_urls(pairs: list[tuple[str, str]]) -> set[str]:
    """The ValueSets a query's ``:in`` / ``:not-in`` parameters name (to be fetched before parsing)."""
    pairs = _with_filters(pairs)
    return {value for name, value in pairs if name.endswith((":in", ":not-in"))}


def codesystem_urls(pairs: list[tuple[str, str]]) -> set[str]:
    """The code systems a query's ``:below`` / ``:above`` token values name (``system|code``)."""
    pairs = _with_filters(pairs)
    return {
        part.partition("|")[0]
        for name, value in pairs
        if name.endswith((":below", ":above"))
        for part in value.split(",")
        if "|" in part and urlsplit(part.partition("|")[0]).scheme
    }


def _with_filters(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``_filter`` values replaced by the ``:in``/``:not-in``/``:below``/``:above`` criteria they hold."""
    if not any(name == "_filter" for name, _ in pairs):
        return pairs
    from . import filter as filter_

    return [found for pair in pairs for found in (filter_.criteria(pair[1]) if pair[0] == "_filter" else [pair])]


def _subsumption(definition: dict, value: str, modifier: str, scope: Scope) -> Condition:
    """Token ``:below`` / ``:above``: a MIME type and its parameters (search.html#mimetype), else the codes
    the code subsumes / is subsumed by in a CodeSystem stored on this server (search.html#token)."""
    code = definition["code"]
    if (definition.get("expression") or "").endswith(".contentType"):
        mime = _unescape(value)
        if modifier == "above":
            raise not_supported(f"{code}:above={value!r}: :above is not supported on MIME types")
        if "/" not in mime:
            return Entry(code, value_prefix=f"{mime}/")
        return AnyOf((Entry(code, value=mime), Entry(code, value_prefix=f"{mime};")))
    system, token = _cut(value, "|")
    if not system or not token:
        raise bad_request(f"{code}:{modifier}={value!r}: expected system|code")
    tree = scope.codesystems.get(system)
    if tree is None:
        raise bad_request(
            f"{code}:{modifier}={value!r}: no CodeSystem {system} is stored on this server; subsumption needs "
            "its hierarchy (no terminology server is behind this one)"
        )
    codes = tuple(sorted(subsumed(tree, token, modifier == "below")))
    return Entry(code, system=system, value=codes[0]) if len(codes) == 1 else Entry(code, system=system, value_in=codes)


def _in_valueset(code: str, url: str, modifier: str, scope: Scope) -> Condition:
    codes = scope.valuesets.get(url)
    if codes is None:
        raise bad_request(f"{code}:{modifier}={url!r}: no ValueSet with that url is stored on this server")
    matches = AnyOf(tuple(Entry(code, value=c, system=s) if c else Entry(code, system=s) for s, c in codes))
    return Not(matches) if modifier == "not-in" else matches


def _definition(type_: str, code: str) -> dict:
    if code == "_id":
        return {"code": "_id", "type": "_id"}
    if code in ("_text", "_content"):  # word entries (see indexing); no expression in the registry
        from .fhirpath_compile import is_a
        from .indexing import WORD_PARAMETERS

        if code == "_text" and not is_a(type_, "DomainResource"):  # Bundle, Binary, Parameters
            raise bad_request(f"Unknown search parameter {code!r} for resource type {type_}")
        if code not in WORD_PARAMETERS:
            raise not_supported(f"Search parameter {code!r} is not indexed by this server")
        return {"code": code, "type": "words"}
    definition = registry.parameter(type_, code)
    if definition is None:
        raise bad_request(f"Unknown search parameter {code!r} for resource type {type_}")
    return definition


def _split(value: str) -> list[str]:
    """Comma = OR (search.html#escaping): ``\\,`` and ``\\\\`` are literal; ``\\|`` and ``\\$`` stay escaped
    for the token and composite splits; any other escape is illegal."""
    parts, current, escaped = [], [], False
    for ch in value:
        if escaped:
            if ch not in ",|$\\":
                raise bad_request(f"Illegal escape '\\{ch}' in {value!r}: only \\, \\| \\$ and \\\\ are defined")
            current.append(ch if ch in ",\\" else "\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        raise bad_request(f"Dangling escape at the end of {value!r}")
    parts.append("".join(current))
    if any(p == "" for p in parts):
        raise bad_request(f"Empty value in {value!r}")
    return parts


def _cut(value: str, separator: str) -> tuple[str, str | None]:
    """Split at the first unescaped ``separator`` (``|`` or ``$``), unescaping both sides."""
    index = 0
    while (index := value.find(separator, index)) != -1:
        if index == 0 or value[index - 1] != "\\":
            return _unescape(value[:index]), _unescape(value[index + 1 :])
        index += 1
    return _unescape(value), None


def _unescape(value: str) -> str:
    return value.replace("\\|", "|").replace("\\$", "$")


def _any(conditions) -> Condition:
    items = tuple(conditions)
    return items[0] if len(items) == 1 else AnyOf(items)


# --- types ----------------------------------------------------------------------------------------


def _id(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    return IdIn((value,))


def _string(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    code = definition["code"]
    if modifier == "exact":
        return Entry(code, system=value)
    if modifier == "contains":
        return Entry(code, value_contains=fold(value))
    folded = fold(value)
    if not has_name_parts(type_, code):
        return Entry(code, value_prefix=folded)
    # Names: a part of a compound name matches too, and punctuation is ignored (normalize.name_part_rows).
    found = Entry(code, or_param=f"{code}:part", value_prefix=folded)
    joined = "".join(NAME_SEPARATORS.split(folded))
    return found if joined == folded or not joined else AnyOf((found, Entry(f"{code}:part", value_prefix=joined)))


def _token(code: str, value: str, modifier: str | None) -> Condition:
    if modifier == "text":
        return Entry(f"{code}:text", value_prefix=fold(value))
    if modifier == "of-type":
        if value.count("|") != 2:
            raise bad_request(f"{code}:of-type={value!r}: expected system|code|value")
        return Entry(f"{code}:of-type", value=value)
    system_part, rest = _cut(value, "|")
    if rest is None:
        return Entry(code, value=system_part)
    system, token = system_part, rest
    if not token:
        return Entry(code, system=system)
    if not system:
        return Entry(code, value=token, no_system=True)
    return Entry(code, value=token, system=system)


def _token_builder(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    return _token(definition["code"], value, modifier or None)


def _reference(type_: str, definition: dict, value: str, scope: Scope, type_modifier: str = "") -> Condition:
    """``Type/id``, a bare ``id`` (every target type), this server's ``[base]/Type/id``, another absolute URL,
    or a canonical (``url|version``: the versioned entry, see ``normalize.canonical_rows``)."""
    code = definition["code"]
    base = scope.base
    if base and value.startswith(base + "/"):
        value = value[len(base) + 1 :]
    if "/_history/" in value:
        value = value.split("/_history/", 1)[0]
    if urlsplit(value).scheme:  # an absolute URL elsewhere, or a canonical
        return Entry(code, value=value)
    if "/" in value:
        ref_type, _, ref_id = value.rpartition("/")
        if type_modifier and ref_type != type_modifier:
            raise bad_request(f"{code}:{type_modifier}={value!r}: the reference type contradicts the modifier")
        return _local_reference(code, (f"{ref_type}/{ref_id}",), base)
    targets = (type_modifier,) if type_modifier else targets_of(type_, definition)
    if not targets:
        raise bad_request(f"{code}={value!r}: give the reference as Type/id")
    if len(targets) > 1:
        _check_ambiguity(code, value, targets, scope)
    return _local_reference(code, tuple(f"{t}/{value}" for t in targets), base)


def targets_of(type_: str, definition: dict) -> tuple[str, ...]:
    """The types a reference parameter can point at from ``type_``: its declared targets, narrowed by the
    ``where(resolve() is T)`` of the expression for that type (``Observation?patient`` declares Patient and
    Group, but its Observation expression keeps Patient subjects only)."""
    targets = tuple(definition.get("target", ()))
    if len(targets) < 2 or not definition.get("expression"):
        return targets
    return _narrowed_targets(type_, definition["expression"], targets)


@lru_cache(maxsize=1024)
def _narrowed_targets(type_: str, expression: str, targets: tuple[str, ...]) -> tuple[str, ...]:
    from .fhirpath_compile import parse as parse_fhirpath

    try:
        tree = parse_fhirpath(expression)
    except ValueError:
        return targets
    members: list[tuple] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if node[0] == "union":
            stack += [node[1], node[2]]
        else:
            members.append(node)
    relevant = [m for m in members if _root_name(m) in (type_, "Resource", "DomainResource")]
    resolved = {_resolve_is(m) for m in relevant}
    if not relevant or None in resolved:
        return targets
    return tuple(t for t in targets if t in resolved)


def _root_name(node: tuple) -> str | None:
    while node[0] == "dot":
        node = node[1]
    return node[1] if node[0] == "name" else None


def _resolve_is(node: object) -> str | None:
    """The ``T`` of a ``resolve() is T`` anywhere in ``node``."""
    if not isinstance(node, tuple):
        return None
    if len(node) == 3 and node[0] == "is" and node[1] == ("call", "resolve", ()):
        return node[2]
    for child in node[1:] if isinstance(node[0], str) else node:
        found = _resolve_is(child)
        if found is not None:
            return found
    return None


def _local_reference(code: str, refs: tuple[str, ...], base: str) -> Entry:
    """References to resources of this server, stored relative (``Type/id``) or, when written before the
    server knew its base, absolute with the base of this request: both forms match."""
    values = (*refs, *(f"{base}/{ref}" for ref in refs)) if base else refs
    return Entry(code, value=values[0]) if len(values) == 1 else Entry(code, value_in=values)


def _check_ambiguity(code: str, id_: str, targets: tuple[str, ...], scope: Scope) -> None:
    """search.html#reference: a logical id naming resources of several types SHOULD be rejected."""
    if scope.wanted is not None:
        scope.wanted.add(("id", id_, targets))
    elif scope.found is not None:
        types = sorted(scope.found.get(id_, frozenset()) & set(targets))
        if len(types) > 1:
            both = ", ".join(f"{t}/{id_}" for t in types)
            raise bad_request(f"{code}={id_!r} is ambiguous: {both} all exist; give the reference as Type/id")


def _reference_builder(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    if modifier == "identifier":
        return _token(f"{definition['code']}:identifier", value, None)
    return _reference(type_, definition, value, scope)


def _reference_hierarchy(type_: str, definition: dict, value: str, modifier: str, scope: Scope) -> Condition:
    """``:below`` / ``:above`` on a reference: on a canonical, versions (search.html#versions); on a resource
    whose type has a circular reference (``Location.partOf``), it and the resources below / above it
    (search.html#recursive)."""
    code = definition["code"]
    if scope.base and value.startswith(scope.base + "/"):
        value = value[len(scope.base) + 1 :]
    if urlsplit(value).scheme:
        if modifier == "above":
            raise not_supported(f"{code}:above={value!r}: :above is not supported on canonical references")
        return _canonical_below(code, value)
    ref_type, _, id_ = value.rpartition("/")
    targets = (ref_type,) if ref_type else targets_of(type_, definition)
    usable = [t for t in targets if circular_parameter(t)]
    if not usable or not id_:
        raise not_supported(f"{code}:{modifier}={value!r}: no target type of {code!r} forms a hierarchy")
    refs: list[str] = []
    for target in usable:
        key = (target, id_, modifier)
        if scope.wanted is not None:
            scope.wanted.add(("tree", *key))
            ids: tuple[str, ...] = (id_,)
        elif scope.linked is not None and key in scope.linked:
            ids = scope.linked[key]
        else:
            raise not_supported(f"{code}:{modifier}: hierarchies are resolved in searches only")
        refs += (f"{target}/{i}" for i in ids)
    return _local_reference(code, tuple(refs), scope.base)


@lru_cache(maxsize=512)
def circular_parameter(type_: str) -> str | None:
    """The reference parameter by which resources of ``type_`` form a hierarchy (``Location.partof``): the one
    parameter of ``type_`` targeting ``type_`` only."""
    params = registry.parameters_of(type_).items()
    found = [c for c, d in params if d["type"] == "reference" and d.get("target") == [type_]]
    return found[0] if len(found) == 1 else None


def _canonical_below(code: str, value: str) -> Condition:
    """search.html#versions: ``:below`` on a canonical reference controls the version: ``url`` matches every
    version, ``url|1`` versions 1 and 1.x."""
    url, _, version = value.partition("|")
    if not urlsplit(url).scheme:
        raise not_supported(f"{code}:below={value!r}: :below on a reference is supported for canonical URLs only")
    if not version:
        return Entry(code, value=url)
    return AnyOf((Entry(code, value=f"{url}|{version}"), Entry(code, value_prefix=f"{url}|{version}.")))


def _prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


def _ranges(prefix: str, low: float, high: float, approx: float = 0.0) -> Condition:
    """Target [low, high) against search [low, high) per prefix (search.html#prefix)."""
    match prefix:
        case "eq":
            return _range_entry(("low", ">=", low), ("high", "<=", high))
        case "ne":
            return Not(_range_entry(("low", ">=", low), ("high", "<=", high)))
        case "gt":
            return _range_entry(("high", ">", high))
        case "lt":
            return _range_entry(("low", "<", low))
        case "ge":
            return _range_entry(("high", ">", low))
        case "le":
            return _range_entry(("low", "<", high))
        case "sa":
            return _range_entry(("low", ">=", high))
        case "eb":
            return _range_entry(("high", "<=", low))
        case "ap":
            return _range_entry(("low", "<", high + approx), ("high", ">", low - approx))
    raise bad_request(f"Unknown prefix {prefix!r}")


_CURRENT_CODE = ""


def _range_entry(*tests: tuple[str, str, float]) -> Entry:
    return Entry(_CURRENT_CODE, ranges=tuple(Range(f, op, b) for f, op, b in tests))  # type: ignore[arg-type]


def _with_code(cond: Condition, code: str, **fields) -> Condition:
    if isinstance(cond, Not):
        return Not(_with_code(cond.condition, code, **fields))
    assert isinstance(cond, Entry)
    return Entry(code, ranges=cond.ranges, **fields)


def _date(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    prefix, raw = _prefix(value)
    found = date_range(raw)
    if found is None:
        raise bad_request(f"{definition['code']}={value!r}: not a valid date (YYYY, YYYY-MM, YYYY-MM-DD, dateTime)")
    low, high = found
    approx = abs(time.time() * 1e6 - low) * 0.1
    return _with_code(_ranges(prefix, low, high, approx), definition["code"])


def _decimal(code: str, raw: str) -> Decimal:
    try:
        number = Decimal(raw)
    except InvalidOperation:
        raise bad_request(f"{code}={raw!r}: not a number") from None
    if not number.is_finite():
        raise bad_request(f"{code}={raw!r}: not a finite number")
    return number


def _exact_ranges(prefix: str, number: Decimal) -> Condition:
    """Numbers and quantities (search.html#number): targets are exact values (or Range bounds); ``eq`` /
    ``ne`` use the search value's implicit precision range, the other prefixes its exact value."""
    low, high = number_range(number)
    v = float(number)
    d = abs(v) * 0.1
    match prefix:
        case "eq":
            return _range_entry(("low", ">=", low), ("high", "<", high))
        case "ne":
            return Not(_range_entry(("low", ">=", low), ("high", "<", high)))
        case "gt":
            return _range_entry(("high", ">", v))
        case "lt":
            return _range_entry(("low", "<", v))
        case "ge":
            return _range_entry(("high", ">=", v))
        case "le":
            return _range_entry(("low", "<=", v))
        case "sa":
            return _range_entry(("low", ">", v))
        case "eb":
            return _range_entry(("high", "<", v))
        case "ap":
            return _range_entry(("low", "<=", v + d), ("high", ">=", v - d))
    raise bad_request(f"Unknown prefix {prefix!r}")


def _number(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    prefix, raw = _prefix(value)
    return _with_code(_exact_ranges(prefix, _decimal(definition["code"], raw)), definition["code"])


def _quantity(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    code = definition["code"]
    number_part, _, unit_part = value.partition("|")
    prefix, raw = _prefix(number_part)
    number = _decimal(code, raw)
    fields: dict = {}
    if unit_part:
        system, _, unit = unit_part.partition("|")
        if not _:
            raise bad_request(f"{code}={value!r}: expected number|system|code")
        if unit:
            fields["value"] = unit
        if system:
            fields["system"] = system
    return _with_code(_exact_ranges(prefix, number), code, **fields)


def _uri(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    code = definition["code"]
    if not modifier and code == "url" and "|" in value and registry.parameter(type_, "version") is not None:
        # search.html#uri: a canonical's |version is a search on the resource's version.
        url, _, version = value.partition("|")
        return AllOf((Entry(code, value=url), _token("version", version, None))) if version else Entry(code, value=url)
    if not modifier and scope.base and not urlsplit(value).scheme:
        # A relative URI is relative to this server (search.html#profile: _profile=Profile/lipid).
        return Entry(code, value_in=(value, f"{scope.base}/{value}"))
    if modifier in ("below", "above") and not urlsplit(value).netloc:
        return Entry(code, value=value)  # :above/:below are for URLs, not URNs (search.html#uri)
    if modifier == "below":
        return Entry(code, value_prefix=value)
    if modifier == "above":
        parts = value.split("/")
        return _any(Entry(code, value="/".join(parts[:i])) for i in range(len(parts), 2, -1))
    return Entry(code, value=value)


def _composite(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    """``token$second`` against entries value=``system|code``, system/low/high from the second component."""
    code = definition["code"]
    first, sep, second = value.partition("$")
    components = definition.get("component", ())
    if not sep or not second or "$" in second or len(components) != 2:
        raise bad_request(f"{code}={value!r}: expected two components, first$second")
    # The token part is stored as "system|code"; a bare code matches it in any system.
    token = {"value": first} if "|" in first else {"value_suffix": f"|{first}"}
    second_type = (registry.by_url().get(components[1].get("definition", "")) or {}).get("type")
    if second_type in ("quantity", "number", "date"):
        builder = {"quantity": _quantity, "number": _number, "date": _date}[second_type]
        ranged = builder({"code": code}, second, "", scope, type_)
        system = _quantity_units(second) if second_type == "quantity" else None
        return _with_code(ranged, code, **token, **({"system": system} if system else {}))
    if second_type == "token" and "|" not in second:  # a bare code: in any system (stored "system|code")
        return Entry(code, system_suffix=fold(f"|{second}"), **token)
    return Entry(code, system=second if second_type == "reference" else fold(second), **token)


def _quantity_units(value: str) -> str | None:
    """``5.4|http://unitsofmeasure.org|mg`` → ``http://unitsofmeasure.org|mg`` (how composites store units)."""
    parts = value.split("|")
    return f"{parts[1]}|{parts[2]}" if len(parts) == 3 and parts[1] and parts[2] else None


_BUILDERS = {
    "_id": _id,
    "string": _string,
    "token": _token_builder,
    "reference": _reference_builder,
    "date": _date,
    "number": _number,
    "quantity": _quantity,
    "uri": _uri,
    "composite": _composite,
}


def _words(definition: dict, value: str, modifier: str, scope: Scope, type_: str) -> Condition:
    """``_text``/``_content``: words (each folded word prefixes some word entry of the resource), joined by
    ``and`` (or nothing) and ``or``, grouped with parentheses: ``(bone OR liver) and metastases``
    (search.html#text; the operators in any case, ``and`` binding tighter)."""
    code = definition["code"]
    tokens = [t for t in _TEXT_TOKENS.findall(value) if t in "()" or t.lower() in ("and", "or") or words(t)]
    if not any(t not in "()" and t.lower() not in ("and", "or") for t in tokens):
        raise bad_request(f"{code}={value!r}: no word (letters or digits) to search for")
    parser = _TextQuery(code, value, tokens)
    found = parser.disjunction()
    if parser.position != len(tokens):
        raise bad_request(f"{code}={value!r}: unbalanced parentheses")
    return found


_TEXT_TOKENS = re.compile(r"[()]|[^\s()]+")


class _TextQuery:
    """Recursive descent over the tokens of a ``_text`` expression."""

    def __init__(self, code: str, value: str, tokens: list[str]) -> None:
        self.code, self.value, self.tokens, self.position = code, value, tokens, 0

    def _peek(self) -> str | None:
        return self.tokens[self.position].lower() if self.position < len(self.tokens) else None

    def disjunction(self) -> Condition:
        items = [self.conjunction()]
        while self._peek() == "or":
            self.position += 1
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else AnyOf(tuple(items))

    def conjunction(self) -> Condition:
        items = [self.term()]
        while (token := self._peek()) not in (None, ")", "or"):
            if token == "and":
                self.position += 1
            items.append(self.term())
        unique = tuple(dict.fromkeys(items))
        return unique[0] if len(unique) == 1 else AllOf(unique)

    def term(self) -> Condition:
        token = self._peek()
        if token is None or token in (")", "and", "or"):
            raise bad_request(f"{self.code}={self.value!r}: a word or '(' was expected")
        self.position += 1
        if token == "(":
            inner = self.disjunction()
            if self._peek() != ")":
                raise bad_request(f"{self.code}={self.value!r}: unbalanced parentheses")
            self.position += 1
            return inner
        found = tuple(Entry(self.code, value_prefix=word) for word in dict.fromkeys(words(token)))
        return found[0] if len(found) == 1 else AllOf(found)


_BUILDERS["words"] = _words


# --- chains ---------------------------------------------------------------------------------------


def _chain(type_: str, definition: dict, modifier: str, rest: str, value: str, scope: Scope) -> Condition:
    code = definition["code"]
    if definition["type"] != "reference":
        raise bad_request(f"{code}.{rest}: only reference parameters can be chained")
    targets = [modifier] if modifier else list(targets_of(type_, definition))
    usable = [t for t in targets if _knows(t, rest.partition(".")[0].partition(":")[0])]
    if not usable:
        raise bad_request(f"{code}.{rest}: no target type of {code!r} has that search parameter")
    chains = [Chain(code, _linked(t, [(rest, value)], scope)) for t in usable]
    return _any(chains + [c for t in usable if (c := _in_contained(type_, code, t, rest, value, scope))])


def _in_contained(type_: str, code: str, target: str, rest: str, value: str, scope: Scope) -> Condition | None:
    """The last chain level evaluated inside a contained ``target`` that ``code`` refers to (``#id``): the
    same condition on the container's ``code.Target.param`` entries (indexing._contained_rows). Deeper
    chains and ``_has`` from contained resources are not followed."""
    name = rest.partition(":")[0]
    if "." in name or name in ("_id", "_has") or registry.parameter(type_, code) is None:
        return None
    found = condition(target, rest, value, replace(scope, constraints=_no_constraints))
    renamed = _renamed(found, lambda param: contained_param(code, target, param))
    # Only where such a contained resource is referenced (a :not must not match containers without one).
    present = Entry(contained_param(code, target, "_id"))  # an entry (not Missing): an index can drive it
    return None if renamed is None else AllOf((present, renamed))


def _no_constraints(type_: str) -> tuple[Condition, ...]:
    return ()  # a contained resource is part of its container, which carries the caller's constraints


def _renamed(cond: Condition, rename: Callable[[str], str]) -> Condition | None:
    """``cond`` on other entry names; None if it holds a condition that is not about entries."""
    match cond:
        case Entry():
            return replace(cond, param=rename(cond.param), or_param=cond.or_param and rename(cond.or_param))
        case Missing():
            return replace(cond, param=rename(cond.param))
        case Not():
            inner = _renamed(cond.condition, rename)
            return None if inner is None else replace(cond, condition=inner)
        case AnyOf() | AllOf():
            parts = [_renamed(c, rename) for c in cond.conditions]
            return None if any(p is None for p in parts) else replace(cond, conditions=tuple(parts))
    return None


def _knows(type_: str, code: str) -> bool:
    return code in ("_id", "_has") or registry.parameter(type_, code) is not None


def _has(name: str, value: str, scope: Scope) -> Condition:
    """``_has:Observation:patient:code=1234`` (nested ``_has`` allowed)."""
    parts = name.split(":", 3)
    if len(parts) != 4:
        raise bad_request(f"{name}: expected _has:Type:reference-parameter:parameter")
    _, source_type, ref_param, rest = parts
    if source_type not in registry.by_type():
        raise bad_request(f"{name}: unknown resource type {source_type!r}")
    definition = _definition(source_type, ref_param)
    if definition["type"] != "reference":
        raise bad_request(f"{name}: {ref_param!r} is not a reference parameter of {source_type}")
    return Has(ref_param, _linked(source_type, [(rest, value)], scope))


def _list(value: str, scope: Scope) -> Condition:
    """``_list=42``: the resources List/42 refers to (``List.entry.item``), the List under the caller's own
    constraints (a List they cannot read has no members for them). Functional lists (``$current-…``) are
    not supported."""
    ids = _split(value)
    for id_ in ids:
        if id_.startswith("$"):
            raise not_supported(f"_list={id_!r}: functional lists are not supported")
    return Has("item", Search("List", (IdIn(tuple(ids)), *scope.constraints("List"))))

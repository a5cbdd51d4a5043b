"""FHIR search parameters → the store's predicate tree (http://hl7.org/fhir/R4/search.html).

Strict by design: an unknown parameter, an unsupported modifier or a malformed value is a 400 naming
it. Ignoring one would silently return unfiltered data, the weak spot of many servers.
Index entry encoding (what each parameter type matches against) is described in ``indexing``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from ..errors import bad_request, not_supported
from ..instant import date_range
from ..store.query import AnyOf, Chain, Condition, Entry, Has, IdIn, Missing, Not, Range, Search
from . import registry
from .normalize import fold, number_range
from .valuesets import Code

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MAX_CHAIN_DEPTH = 4
_MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "of-type", "missing", "in", "not-in"},
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
    base = scope.base
    if name.startswith("_has:"):
        return _has(name, value, scope)
    head, _, chain_rest = name.partition(".")
    code, _, modifier = head.partition(":")
    definition = _definition(type_, code)
    kind = definition["type"]
    if chain_rest:
        return _chain(definition, modifier, chain_rest, value, scope)
    if modifier == "missing":
        if value not in ("true", "false"):
            raise bad_request(f"{name}={value!r}: :missing takes true or false")
        return Missing(code, value == "true")
    if kind == "reference" and modifier and modifier != "identifier":
        if modifier not in definition.get("target", ()) and modifier not in registry.by_type():
            raise bad_request(f"{name}: {modifier!r} is not a resource type this reference can target")
        return _any(_reference(definition, value, base, modifier) for value in _split(value))
    allowed = _MODIFIERS.get(kind, set())
    if modifier and modifier not in allowed:
        raise not_supported(f"Modifier :{modifier} is not supported for {kind} parameter {code!r}")
    if modifier in ("in", "not-in"):
        return _in_valueset(code, value, modifier, scope)
    values = _split(value)
    if kind not in ("token", "quantity", "composite"):  # only these give "|" or "$" a meaning
        values = [_unescape(v) for v in values]
    if modifier == "not":
        return Not(_any(_token(code, v, None) for v in values))
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise not_supported(f"Search parameter {code!r} of type {kind} is not supported")
    return _any(builder(definition, v, modifier, base) for v in values)


def valueset_urls(pairs: list[tuple[str, str]]) -> set[str]:
    """The ValueSets a query's ``:in`` / ``:not-in`` parameters name (to be fetched before parsing)."""
    return {value for name, value in pairs if name.endswith((":in", ":not-in"))}


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


def _id(definition: dict, value: str, modifier: str, base: str) -> Condition:
    return IdIn((value,))


def _string(definition: dict, value: str, modifier: str, base: str) -> Condition:
    code = definition["code"]
    if modifier == "exact":
        return Entry(code, system=value)
    if modifier == "contains":
        return Entry(code, value_contains=fold(value))
    return Entry(code, value_prefix=fold(value))


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


def _token_builder(definition: dict, value: str, modifier: str, base: str) -> Condition:
    return _token(definition["code"], value, modifier or None)


def _reference(definition: dict, value: str, base: str, type_modifier: str = "") -> Condition:
    code = definition["code"]
    if base and value.startswith(base + "/"):
        value = value[len(base) + 1 :]
    if "/_history/" in value:
        value = value.split("/_history/", 1)[0]
    if urlsplit(value).scheme:  # an absolute URL elsewhere, or a canonical
        return Entry(code, value=value.split("|", 1)[0])
    if "/" in value:
        ref_type, _, ref_id = value.rpartition("/")
        if type_modifier and ref_type != type_modifier:
            raise bad_request(f"{code}:{type_modifier}={value!r}: the reference type contradicts the modifier")
        return Entry(code, value=f"{ref_type}/{ref_id}")
    targets = [type_modifier] if type_modifier else list(definition.get("target", ()))
    if not targets:
        raise bad_request(f"{code}={value!r}: give the reference as Type/id")
    return _any(Entry(code, value=f"{t}/{value}") for t in targets)


def _reference_builder(definition: dict, value: str, modifier: str, base: str) -> Condition:
    if modifier == "identifier":
        return _token(f"{definition['code']}:identifier", value, None)
    return _reference(definition, value, base)


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


def _date(definition: dict, value: str, modifier: str, base: str) -> Condition:
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


def _number(definition: dict, value: str, modifier: str, base: str) -> Condition:
    prefix, raw = _prefix(value)
    return _with_code(_exact_ranges(prefix, _decimal(definition["code"], raw)), definition["code"])


def _quantity(definition: dict, value: str, modifier: str, base: str) -> Condition:
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


def _uri(definition: dict, value: str, modifier: str, base: str) -> Condition:
    code = definition["code"]
    if modifier in ("below", "above") and not urlsplit(value).netloc:
        return Entry(code, value=value)  # :above/:below are for URLs, not URNs (search.html#uri)
    if modifier == "below":
        return Entry(code, value_prefix=value)
    if modifier == "above":
        parts = value.split("/")
        return _any(Entry(code, value="/".join(parts[:i])) for i in range(len(parts), 2, -1))
    return Entry(code, value=value)


def _composite(definition: dict, value: str, modifier: str, base: str) -> Condition:
    """``token$second`` against entries value=``system|code``, system/low/high from the second component."""
    code = definition["code"]
    first, sep, second = value.partition("$")
    components = definition.get("component", ())
    if not sep or not second or "$" in second or len(components) != 2:
        raise bad_request(f"{code}={value!r}: expected two components, first$second")
    # The token part is stored as "system|code"; a bare code matches it in any system.
    token = {"value": first} if "|" in first else {"value_contains": f"|{first}"}
    second_type = (registry.by_url().get(components[1].get("definition", "")) or {}).get("type")
    if second_type in ("quantity", "number", "date"):
        builder = {"quantity": _quantity, "number": _number, "date": _date}[second_type]
        ranged = builder({"code": code}, second, "", base)
        system = _quantity_units(second) if second_type == "quantity" else None
        return _with_code(ranged, code, **token, **({"system": system} if system else {}))
    if second_type == "token" and "|" not in second:
        raise bad_request(f"{code}={value!r}: give the second component as system|code")
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


def _words(definition: dict, value: str, modifier: str, base: str) -> Condition:
    """``_text``/``_content=word1 word2``: every (folded) word prefixes some word entry of the resource."""
    from ..store.query import AllOf
    from .normalize import words

    code = definition["code"]
    found = tuple(Entry(code, value_prefix=word) for word in dict.fromkeys(words(value)))
    if not found:
        raise bad_request(f"{code}={value!r}: no word (letters or digits) to search for")
    return found[0] if len(found) == 1 else AllOf(found)


_BUILDERS["words"] = _words


# --- chains ---------------------------------------------------------------------------------------


def _chain(definition: dict, modifier: str, rest: str, value: str, scope: Scope) -> Condition:
    code = definition["code"]
    if definition["type"] != "reference":
        raise bad_request(f"{code}.{rest}: only reference parameters can be chained")
    targets = [modifier] if modifier else list(definition.get("target", ()))
    usable = [t for t in targets if _knows(t, rest.partition(".")[0].partition(":")[0])]
    if not usable:
        raise bad_request(f"{code}.{rest}: no target type of {code!r} has that search parameter")
    return _any(Chain(code, _linked(t, [(rest, value)], scope)) for t in usable)


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

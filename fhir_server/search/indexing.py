"""Index entries computed at write time, stored with the version in the same atomic write.

Every SearchParameter of the resource's type (and the ``Resource`` ones: ``_lastUpdated``, ``_tag``,
``_profile``, ``_security``, ``_source``; ``_id`` is native to the stores) is compiled once per type
into extractors (``fhirpath_compile``) each bound to the normalizer of its static FHIR type
(``normalize``), so a write runs plain dict/list code only.

Entry encoding, ``IndexEntry(param, value, system, low, high)``, one entry per value (repeating
elements give several; duplicates are removed):

- string: value = ``fold(text)``, system = the original text (``:exact``). HumanName → one entry per
  family, given, prefix, suffix, text; Address → per line, city, district, state, postalCode, country,
  text. A family or given name with several parts also gets ``{param}:part`` entries (value only): each
  part after the first, and the parts joined when it has punctuation other than spaces and hyphens
  (``Carreno Quinones`` → ``quinones``; ``O'Brien`` → ``brien``, ``obrien``); single-part names get none.
- token: value = code, system = its system or None. Coding(code, system), CodeableConcept (one per
  coding), Identifier(value, system), ContactPoint(value, system = phone|email…), string/id/uri
  (system None), boolean ("true"/"false"). A ``code`` element has the system its binding implies when
  it is bound (required) to a ValueSet drawing from a single CodeSystem (``capability/code-systems-r4.json``,
  built by ``tools/build_code_systems.py``): ``Patient.gender`` → ``http://hl7.org/fhir/administrative-gender``,
  so ``gender=male`` and ``gender=http://hl7.org/fhir/administrative-gender|male`` match, ``gender=|male``
  does not; other codes have system None. Plus ``{param}:text`` entries, value = folded
  Coding.display / CodeableConcept.text / Identifier.type.text; and ``{param}:of-type`` entries,
  value = ``{type.coding.system or ''}|{type.coding.code}|{identifier.value}``.
- reference: value = ``Type/id`` (relative, ``/_history/n`` stripped) or the absolute URL (history
  stripped too; ``index_entries(…, base)`` makes ``[base]/Type/id`` relative) or the canonical URL without
  ``|version`` (a versioned canonical gets a second entry, ``url|version``); system = the target type
  (from the reference, else Reference.type, else the parameter's single target, else None); low = the
  version of a versioned reference (``Patient/1/_history/2`` → 2, what ``_include`` returns), else None.
  ``#local`` references are skipped. Plus ``{param}:identifier`` entries: value/system =
  Reference.identifier value/system. A resource in reference position (Bundle.entry[0].resource) gives
  ``Type/id``.
- date: low/high = [low, high) µs since the epoch UTC (``instant.date_range``; no zone → UTC);
  Period = start's low .. end's high, open ends -inf/+inf; Timing = one per event.
- number: low/high = the implicit precision range (``100`` → [99.5, 100.5]), value = canonical
  decimal (``1.50`` → ``1.5``). Range → low.value's low .. high.value's high, value None.
- quantity: low/high as number (a comparator opens one side: ``<5`` → [-inf, 5.5]), system =
  Quantity.system, value = Quantity.code, plus a second entry with value = unit when it differs.
  Money: value = currency, system = ``urn:iso:std:iso:4217``. Range: its bounds, unit of low/high.
- uri: value = the URI as is; a versioned ``canonical`` (``meta.profile``) also without its ``|version``.
- composite: one entry per combination of component values on the same element (Observation, each
  Observation.component, each useContext…): value = first component as ``system|code`` (system ''
  when absent), system = the other components' text joined by ``$``: quantity → ``system|code`` (and
  ``system|unit``), token → ``fold("system|code")``, string → folded, reference → its value; low/high = the
  quantity/date range; for number components (MolecularSequence ``chromosome$start$end``)
  low = start, high = end exactly.
- ``_text`` (DomainResource): one entry per distinct folded word of the narrative ``text.div`` (tags
  stripped, entities decoded), value = the word (``normalize.words``: runs of letters/digits, each
  ``fold``-ed: ``Hélène`` → ``helene``). ``_content``: the same over the narrative and every ``string``/
  ``markdown`` value of the resource in document order, contained resources included (codes, ids, URIs,
  ``Reference.reference``, ``Extension.url``, base64 data, dates, numbers, booleans are not prose).
  Cap: at most ``normalize.MAX_WORDS`` = 300 distinct words per parameter per resource, the first ones
  in document order; words beyond are not searchable. Only the parameters in ``WORD_PARAMETERS`` are
  written, ``_text`` alone by default: a word is an entry, and entries are what a write pays for
  (Patient-example: 39 entries → 62 with ``_text`` → 99 with ``_content`` as well).
- special (``near``), parameters without expression, SampledData/Age/string dates: not indexed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

from ..store import IndexEntry
from . import fhirpath_compile as fc
from . import normalize as n
from .fhirpath_compile import (
    RESOURCE_TYPES,
    Branch,
    Step,
    compile_expression,
    compile_param,
    is_a,
    then,
)
from .registry import CAPABILITY_DIR, by_type, definitions

Emit = Callable[[str, Any], list[n.Row]]

_STRINGISH = frozenset({"string", "markdown", "code", "id", "uri", "url", "canonical", "oid", "uuid"})
_DATES = frozenset({"date", "dateTime", "instant"})
_NUMBERS = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
_SKIPPED_CODES = frozenset({"_id"})  # stored natively by both stores


@lru_cache(maxsize=1)
def code_systems() -> dict[str, str]:
    """Element path (``Patient.gender``) → the CodeSystem its required binding implies."""
    with open(CAPABILITY_DIR / "code-systems-r4.json", "rb") as f:
        return json.load(f)


def _emitter(param_type: str, fhir_type: str, target: str | None) -> Emit | None:
    """The normalizer for values of static ``fhir_type`` in a parameter of ``param_type``."""
    if param_type == "string":
        if fhir_type in _STRINGISH:
            return n.string_rows
        return {"HumanName": n.human_name_rows, "Address": n.address_rows}.get(fhir_type)
    if param_type == "token":
        if fhir_type in _STRINGISH:
            return n.code_rows
        return {
            "CodeableConcept": n.codeable_concept_rows, "Coding": n.coding_rows,
            "Identifier": n.identifier_rows, "ContactPoint": n.contact_point_rows,
            "boolean": n.boolean_rows,
        }.get(fhir_type)  # fmt: skip
    if param_type == "reference":
        if fhir_type == "Reference":
            return partial(n.reference_rows, target=target)
        if fhir_type in ("canonical", "uri", "url"):
            return partial(n.canonical_rows, target=target)
        if fhir_type == "Resource" or fhir_type in RESOURCE_TYPES:
            return n.resource_rows
        return None
    if param_type == "date":
        if fhir_type in _DATES:
            return n.date_rows
        return {"Period": n.period_rows, "Timing": n.timing_rows}.get(fhir_type)
    if param_type == "number":
        if fhir_type in _NUMBERS:
            return n.number_rows
        return n.range_number_rows if fhir_type == "Range" else None
    if param_type == "quantity":
        if fhir_type == "Money":
            return n.money_rows
        if fhir_type == "Range":
            return n.range_quantity_rows
        return n.quantity_rows if is_a(fhir_type, "Quantity") else None
    if param_type == "uri":
        if fhir_type == "canonical":
            return n.canonical_uri_rows
        return n.uri_rows if fhir_type in _STRINGISH else None
    return None


def _guess_type(value: Any, param_type: str) -> str:
    """The FHIR type of a value only known at run time (fhirpathpy fallback)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "dateTime" if param_type == "date" else "uri" if param_type == "reference" else "string"
    if not isinstance(value, dict):
        return "decimal"
    keys = value.keys()
    for type_, marker in (
        ("Resource", "resourceType"), ("Reference", "reference"), ("HumanName", "family"),
        ("HumanName", "given"), ("Address", "line"), ("Address", "city"), ("CodeableConcept", "coding"),
        ("Period", "start"), ("Period", "end"), ("Range", "low"), ("Range", "high"), ("Money", "currency"),
        ("Timing", "event"),
    ):  # fmt: skip
        if marker in keys:
            return type_
    if "value" in keys and param_type == "quantity":
        return "Quantity"
    if "value" in keys and param_type == "token":
        return "Identifier"
    return "Coding" if "code" in keys else "Reference" if "identifier" in keys else "CodeableConcept"


def _runtime_emitter(param_type: str, target: str | None) -> Emit:
    def emit(param: str, value: Any) -> list[n.Row]:
        found = _emitter(param_type, _guess_type(value, param_type), target)
        return found(param, value) if found else []

    return emit


def _bind(branches: tuple[Branch, ...] | list[Branch], param_type: str, target: str | None) -> list:
    """(head key, extractor, emitter); Extension values are unwrapped statically through value[x]."""
    bound = []
    for branch in branches:
        if branch.type == "Extension":
            bound += _bind([then(branch, b) for b in compile_expression("value", "Extension")], param_type, target)
        elif branch.type == "*":
            bound.append((branch.head, branch.fn, _runtime_emitter(param_type, target)))
        else:
            emit = _emitter(param_type, branch.type, target)
            if emit is n.code_rows and branch.type == "code" and branch.path in code_systems():
                emit = partial(n.code_rows, system=code_systems()[branch.path])
            elif emit is n.string_rows and branch.path in NAME_PART_PATHS:
                emit = n.name_string_rows
            if emit is not None:
                bound.append((branch.head, branch.fn, emit))
    return bound


# String elements whose compound values also get ``:part`` rows (see ``normalize.name_part_rows``); HumanName
# parameters (``name``, ``phonetic``) get them for family and given through ``human_name_rows``.
NAME_PART_PATHS = frozenset({"HumanName.family", "HumanName.given"})


def has_name_parts(type_: str, code: str) -> bool:
    """Whether ``code`` of ``type_`` is indexed with ``:part`` rows (a string search then also matches them)."""
    return code in _name_part_params(type_ if type_ in RESOURCE_TYPES else "DomainResource")


@lru_cache(maxsize=512)
def _name_part_params(type_: str) -> frozenset[str]:
    found = set()
    for code, definition in parameters(type_).items():
        if definition["type"] == "string" and code != "phonetic":
            for branch in compile_param(definition["expression"], type_):
                if branch.type == "HumanName" or branch.path in NAME_PART_PATHS:
                    found.add(code)
    return frozenset(found)


def _single_target(definition: dict) -> str | None:
    targets = definition.get("target") or ()
    return targets[0] if len(targets) == 1 else None


@lru_cache(maxsize=1)
def _by_url() -> dict[str, dict]:
    return {d["url"]: d for d in definitions()}


Producer = Callable[[list, dict, dict], list[n.Row]]


def _composite(code: str, definition: dict, type_: str) -> Producer | None:
    """The composite's row producer: components evaluated on each element of the main expression."""
    elements = compile_param(definition["expression"], type_)
    components = []
    for component in definition.get("component") or ():
        part = _by_url().get(component["definition"])
        if part is None:
            return None
        per_type = {
            e.type: _bind(compile_param(component["expression"], e.type, type_), part["type"], None) for e in elements
        }
        components.append((part["type"], per_type))
    element_fns = [(e.head, e.fn, e.type) for e in elements]

    def rows(focus: list, root: dict, memo: dict) -> list[n.Row]:
        out: list[n.Row] = []
        for head, fn, element_type in element_fns:
            if head is not None and head not in root:
                continue
            for element in fn(focus, root):
                parts = _component_parts(components, element_type, element, root, memo)
                if parts:
                    out += n.composite_rows(code, parts)
        return out

    return rows


def _may_have(bound: list, element: Any) -> bool:
    return element.__class__ is dict and any(head is None or head in element for head, _, _ in bound)


def _component_parts(
    components: list, element_type: str, element: Any, root: dict, memo: dict
) -> list[list[n.Fragment]] | None:
    """Each component's fragments on ``element``; None unless every component has a value."""
    if not all(_may_have(bound[element_type], element) for _, bound in components):
        return None  # cheap key test before any normalization
    parts = []
    item = [element]
    for position, (param_type, bound_by_type) in enumerate(components):
        fragments: list[n.Fragment] = []
        first = position == 0
        for head, fn, emit in bound_by_type[element_type]:
            if head is not None and head not in element:
                continue
            for value in fn(item, root):
                key = (id(value), emit, first)  # the same code is a component of many composites
                found = memo.get(key)
                if found is None:  # (value kept alive in the memo so its id cannot be reused)
                    rows = emit("", value)
                    found = memo[key] = (value, n.composite_fragments(param_type, rows, "", first))
                fragments += found[1]
        if not fragments:
            return None
        parts.append(fragments)
    return parts


# Per resource type: extractors grouped by the top-level key they read (a write only runs those of the
# keys the resource has), the ones that read no key first, and the composite producers.
Plan = tuple[dict[str, list[tuple[str, Step, Emit]]], tuple[tuple[str, Step, Emit], ...], tuple[Producer, ...]]


def parameters(type_: str) -> dict[str, dict]:
    """code → definition of the parameters indexed for ``type_`` (with expression, not special/_id)."""
    table = by_type()
    params: dict[str, dict] = {**table.get("Resource", {})}
    if is_a(type_, "DomainResource"):
        params.update(table.get("DomainResource", {}))
    if type_ in RESOURCE_TYPES:
        params.update(table.get(type_, {}))
    return {
        code: d
        for code, d in params.items()
        if d.get("expression") and code not in _SKIPPED_CODES and d["type"] != "special"
    }


@lru_cache(maxsize=512)
def plan(type_: str) -> Plan:
    """Compile every parameter of ``type_`` once."""
    in_type = type_ if type_ in RESOURCE_TYPES else "DomainResource"  # unknown: the common parameters
    by_head: dict[str, list[tuple[str, Step, Emit]]] = {}
    headless, composites = [], []
    for code, definition in parameters(in_type).items():
        expression, param_type = definition["expression"], definition["type"]
        if param_type == "composite":
            producer = _composite(code, definition, in_type)
            if producer is not None:
                composites.append(producer)
            continue
        branches = compile_param(expression, in_type)
        for head, fn, emit in _bind(branches, param_type, _single_target(definition)):
            if head is None:
                headless.append((code, fn, emit))
            else:
                by_head.setdefault(head, []).append((code, fn, emit))
    return by_head, tuple(headless), tuple(composites)


# --- _text and _content ----------------------------------------------------------------------------

# The word parameters written at index time; the query side refuses the others. ``_content`` is
# implemented but off: it makes writes far more than 30% slower (Patient-example, index_entries 60 µs
# → 86 µs with _text → 146 µs with _content too; the SQLite write +39% → +126%): a word is an entry.
# ``content_search`` (setting, env FHIR_SERVER_CONTENT_SEARCH) turns it on for deployments that want it.
# Turning one on or off needs ``fhir-server reindex`` for the resources already stored.
_CONTENT_FROM_ENV = os.environ.get("FHIR_SERVER_CONTENT_SEARCH", "").lower() in ("1", "true", "yes")
WORD_PARAMETERS: frozenset[str] = frozenset({"_text", "_content"} if _CONTENT_FROM_ENV else {"_text"})


def use_content_search(enabled: bool) -> None:
    """Index (and accept searches on) ``_content`` in this process: the server applies its setting at start."""
    global WORD_PARAMETERS
    WORD_PARAMETERS = frozenset({"_text", "_content"} if enabled else {"_text"})


_TEXT, _XHTML = "#text", "#xhtml"  # string/markdown, the narrative's xhtml
_NOT_TEXT = {("Reference", "reference"), ("Extension", "url")}  # typed string in the model, not prose
_MAX_DEPTH = 64  # nesting read for words (extension.extension…, item.item…): a write never fails on depth
_ABSENT = object()
_CHILDREN: dict[str, dict[str, str | None]] = {}  # type → key → what it holds (None: nothing to read)


def _child(type_: str, key: str) -> str | None:
    """What the text walk reads under ``key`` of a ``type_``: _TEXT, _XHTML, a complex type, or None."""
    if key == "id" or key == "resourceType" or (type_, key) in _NOT_TEXT:
        return None
    if key[:1] == "_":  # a primitive's id/extensions
        return "Element"
    found = fc.element(type_, key) if type_ else None
    kind = next((t for k, t in found or () if k == key), None)
    if kind in ("string", "markdown"):
        return _TEXT
    if kind == "xhtml":
        return _XHTML
    return kind if kind and not kind[:1].islower() else None  # other primitives are not prose


def _strings(node: dict, type_: str, out: list[str], depth: int = 0) -> None:
    """Append the prose of ``node`` (of ``type_``) to ``out`` in document order, narratives as text."""
    children = _CHILDREN.get(type_)
    if children is None:
        children = _CHILDREN[type_] = {}
    for key, value in node.items():
        child = children.get(key, _ABSENT)
        if child is _ABSENT:
            child = children[key] = _child(type_, key)
        if child is None:
            continue
        if child is _TEXT:
            if value.__class__ is str:
                out.append(value)
            elif value.__class__ is list:
                out += [item for item in value if item.__class__ is str]
            continue
        for item in value if value.__class__ is list else (value,):
            if child is _XHTML:
                if item.__class__ is str:
                    out.append(n.xhtml_text(item))
            elif item.__class__ is dict and depth < _MAX_DEPTH:
                if child != "Resource":
                    _strings(item, child, out, depth + 1)
                elif item.get("resourceType") in RESOURCE_TYPES:
                    _strings(item, item["resourceType"], out, depth + 1)


_CHUNK = 64  # strings per word extraction: a huge resource stops being read once the cap is reached


def _word_rows(param: str, texts: list[str]) -> list[n.Row]:
    found: dict[str, None] = {}
    for start in range(0, len(texts), _CHUNK):
        if not n.add_words(found, "\n".join(texts[start : start + _CHUNK])):
            break
    return [(param, word, None, None, None) for word in found]


def text_rows(resource: dict, type_: str) -> list[n.Row]:
    """``_text`` (narrative words) and ``_content`` (narrative and every string/markdown) rows."""
    rows: list[n.Row] = []
    if "_text" in WORD_PARAMETERS and is_a(type_, "DomainResource"):
        narrative = resource.get("text")
        div = narrative.get("div") if narrative.__class__ is dict else None
        if div.__class__ is str and div:
            rows = _word_rows("_text", [n.xhtml_text(div)])
    if "_content" in WORD_PARAMETERS:
        texts: list[str] = []
        _strings(resource, type_, texts)
        rows += _word_rows("_content", texts)
    return rows


@lru_cache(maxsize=512)
def _reference_codes(type_: str) -> frozenset[str]:
    return frozenset(code for code, d in parameters(type_).items() if d["type"] == "reference")


def _relative_to(base: str, type_: str, rows: list[n.Row]) -> list[n.Row]:
    """References to this server's own ``base`` (``[base]/Patient/1``) indexed as ``Patient/1``, so that
    searches, chains, ``_has``, includes and compartments treat both forms alike (search.html#reference)."""
    prefix = base.rstrip("/") + "/"
    codes = _reference_codes(type_)
    out = []
    for row in rows:
        value = row[1]
        if value.__class__ is str and value.startswith(prefix) and row[0] in codes:
            local = value[len(prefix) :]
            if local.count("/") == 1 and fc.literal_type(local):
                row = (row[0], local, *row[2:])
        out.append(row)
    return out


def index_entries(resource: dict, base: str | None = None) -> list[IndexEntry]:
    """The entries of ``resource``; ``base``: this server's configured base URL (``settings.base_url``), to
    index references to it as relative ones."""
    type_ = resource.get("resourceType") or ""
    by_head, headless, composites = plan(type_)
    focus = [resource]
    rows: list[n.Row] = []
    for key in resource:
        for code, fn, emit in by_head.get(key, ()):
            for value in fn(focus, resource):
                rows += emit(code, value)
    for code, fn, emit in headless:
        for value in fn(focus, resource):
            rows += emit(code, value)
    memo: dict = {}
    for producer in composites:
        rows += producer(focus, resource, memo)
    rows += text_rows(resource, type_ if type_ in RESOURCE_TYPES else "DomainResource")
    contained = resource.get("contained")
    if contained.__class__ is list and contained:
        rows += _contained_rows(rows, contained)
    if base:
        rows = _relative_to(base, type_ if type_ in RESOURCE_TYPES else "DomainResource", rows)
    return [IndexEntry(*row) for row in dict.fromkeys(rows)]


def _contained_rows(rows: list[n.Row], contained: list) -> list[n.Row]:
    """For each local reference ``param`` → ``#id``, the entries of that contained resource under
    ``param.Type.code`` (search.html#contained: "a chained condition will be evaluated inside contained
    resources"). Contained resources are never matches of their own."""
    by_id = {
        c["id"]: c
        for c in contained
        if c.__class__ is dict and c.get("id").__class__ is str and c.get("resourceType").__class__ is str
    }
    found: list[n.Row] = []
    for param, value, *_ in rows:
        if value.__class__ is str and value[:1] == "#" and value[1:] in by_id:
            inner = by_id[value[1:]]
            type_ = inner["resourceType"]
            found.append((contained_param(param, type_, "_id"), inner["id"], None, None, None))  # it is there
            found += [(contained_param(param, type_, e[0]), *e[1:]) for e in index_entries(inner)]
    return found


def contained_param(reference_param: str, type_: str, code: str) -> str:
    """The entry name of ``code`` of a ``type_`` resource contained and referenced through ``reference_param``."""
    return f"{reference_param}.{type_}.{code}"


def restamped(entries: list[IndexEntry], body: dict) -> list[IndexEntry]:
    """``entries`` of a resource as sent, made those of ``body``, the same resource as stored: only
    ``_lastUpdated`` depends on the ``meta`` the server stamps (``id`` and ``versionId`` index nothing).
    Entries are used positionally: those computed in a validation helper arrive as plain tuples."""
    meta_only = {"resourceType": body["resourceType"], "meta": {"lastUpdated": body["meta"]["lastUpdated"]}}
    stamped = [e for e in index_entries(meta_only) if e[0] == "_lastUpdated"]
    return [e for e in entries if e[0] != "_lastUpdated"] + stamped

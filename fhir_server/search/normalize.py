"""Normalization of search values: shared by the write-time indexer and the query parser.

Every ``*_rows`` function turns one FHIR value into index rows ``(param, value, system, low, high)``:
the field order of ``IndexEntry``, as plain tuples so the indexer can de-duplicate them cheaply. The
encoding per search parameter type is documented in ``indexing``.
"""

from __future__ import annotations

import html
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

from ..instant import date_range
from .fhirpath_compile import literal_type

Row = tuple[str, str | None, str | None, float | None, float | None]

NEG_INF = float("-inf")
POS_INF = float("inf")
ISO_4217 = "urn:iso:std:iso:4217"  # Money.currency's code system: what a quantity search names

# ---------------------------------------------------------------------------------------------------
# Scalars.
# ---------------------------------------------------------------------------------------------------

# Letters NFKD does not decompose but users type without the diacritic; typographic apostrophes.
_FOLD_MAP = str.maketrans(
    {
        "œ": "oe", "æ": "ae", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th",
        "\N{LATIN SMALL LETTER DOTLESS I}": "i",
        "\N{RIGHT SINGLE QUOTATION MARK}": "'", "\N{LEFT SINGLE QUOTATION MARK}": "'",
        "\N{MODIFIER LETTER APOSTROPHE}": "'",
    }
)  # fmt: skip


def fold(text: str) -> str:
    """Case- and accent-insensitive form for string search: ``Hélène`` → ``helene``, ``Œuvre`` → ``oeuvre``.

    Casefold (ß → ss), NFKD then drop combining marks (é → e, ﬁ → fi), map the ligatures and letters
    NFKD keeps (œ, æ, ø, ł), typographic apostrophes → ', collapse whitespace. Hyphens and apostrophes
    are kept: they are part of names (``O'Brien``, ``Jean-Pierre``) and a prefix search must see them.
    """
    if text.isascii():  # the common case: no Unicode work at all
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.translate(_FOLD_MAP).split())


def to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    try:
        parsed = Decimal(str(value))
    except InvalidOperation:
        return None
    return parsed if parsed.is_finite() else None


def number_range(value: Decimal) -> tuple[float, float]:
    """The interval a decimal's implicit precision covers: ``100`` → [99.5, 100.5], ``1.50`` → [1.495, 1.505].

    http://hl7.org/fhir/R4/search.html#number: a value matches when the searched value's precision
    range contains it; storing the stored value's own range lets ``eq`` be an interval test.
    """
    half = Decimal(5).scaleb(value.as_tuple().exponent - 1)  # type: ignore[operator]
    return float(value - half), float(value + half)


def canonical_number(value: Decimal) -> str:
    """``1.50`` → ``1.5``, ``1E+2`` → ``100``, ``-0.0`` → ``0``: one spelling per numeric value."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def reference_value(literal: str) -> tuple[str, str | None] | None:
    """A Reference.reference as (value, target type): ``Patient/1/_history/2`` → (``Patient/1``, Patient).

    Absolute URLs are kept whole (the interaction layer may map this server's own base to relative);
    their type is read from their ``…/Type/id`` tail. ``urn:uuid:`` and ``urn:oid:`` have no type.
    Local ``#contained`` references are not searchable: None.
    """
    if not literal or literal[0] == "#":
        return None
    cut = literal.find("/_history/")
    return (literal[:cut] if cut > 0 else literal), literal_type(literal)


def canonical_value(url: str) -> tuple[str, str | None]:
    """A canonical without its ``|version``, with the type of a ``…/Type/id`` URL."""
    url = url.split("|", 1)[0]
    return url, literal_type(url)


def _str(value: Any) -> str | None:
    """A string field, or None when absent or malformed (indexing must never fail a write)."""
    return value if value.__class__ is str else None


def _list(value: Any) -> list:
    return value if value.__class__ is list else []


# ---------------------------------------------------------------------------------------------------
# string
# ---------------------------------------------------------------------------------------------------


def string_rows(param: str, value: Any) -> list[Row]:
    """value = folded text, system = the original text (for ``:exact``)."""
    if value.__class__ is not str or not value:
        return []
    return [(param, fold(value), value, None, None)]


def _parts_rows(
    param: str, value: Any, singles: tuple[str, ...], lists: tuple[str, ...], split: tuple[str, ...] = ()
) -> list[Row]:
    if value.__class__ is not dict:
        return []
    rows: list[Row] = []
    for key in singles:
        part = value.get(key)
        if part.__class__ is str and part:
            rows.append((param, folded := fold(part), part, None, None))
            if key in split:
                rows += name_part_rows(param, folded)
    for key in lists:
        parts = value.get(key)
        for part in parts if parts.__class__ is list else ():
            if part.__class__ is str and part:
                rows.append((param, folded := fold(part), part, None, None))
                if key in split:
                    rows += name_part_rows(param, folded)
    return rows


def human_name_rows(param: str, value: Any) -> list[Row]:
    """One string row per part of the name (search.html#string: HumanName searches all its parts), and the
    ``:part`` rows of compound or punctuated family and given names (``name_part_rows``)."""
    split = ("family", "given") if param != "phonetic" else ()  # phonetic: a copy of the name, no more rows
    return _parts_rows(param, value, ("family", "text"), ("given", "prefix", "suffix"), split)


def name_string_rows(param: str, value: Any) -> list[Row]:
    """``family`` / ``given``: the string row and its ``:part`` rows."""
    rows = string_rows(param, value)
    return rows + name_part_rows(param, rows[0][1]) if rows else rows


NAME_SEPARATORS = re.compile(r"[\s\-'.,]+")


def name_part_rows(param: str, folded: str) -> list[Row]:
    """search.html#string: the parts of a name are searched independently (``Carreno Quinones`` is found by
    ``quinones``) and punctuation is ignored (``O'Brien`` by ``obrien``). For a folded name with several
    parts, rows under ``{param}:part``: each part after the first (the first is the name's own prefix), and
    for a name with punctuation other than spaces and hyphens, the parts joined. Other names get none (a
    row is what a write pays for)."""
    if " " not in folded and "-" not in folded and "'" not in folded and "." not in folded and "," not in folded:
        return []
    parts = [p for p in NAME_SEPARATORS.split(folded) if p]
    if len(parts) < 2:
        return []
    punctuated = "'" in folded or "." in folded or "," in folded
    extra = dict.fromkeys((*parts[1:], "".join(parts)) if punctuated else parts[1:])
    return [(param + ":part", part, None, None, None) for part in extra]


def address_rows(param: str, value: Any) -> list[Row]:
    return _parts_rows(param, value, ("city", "district", "state", "postalCode", "country", "text"), ("line",))


# ---------------------------------------------------------------------------------------------------
# token
# ---------------------------------------------------------------------------------------------------


def _text_row(param: str, text: Any) -> list[Row]:
    """The ``:text`` modifier's row: folded display/text under ``{param}:text``."""
    if text.__class__ is not str or not text:
        return []
    return [(param + ":text", fold(text), None, None, None)]


def coding_rows(param: str, value: Any) -> list[Row]:
    if value.__class__ is not dict:
        return []
    code = value.get("code")
    rows: list[Row] = [(param, code, _str(value.get("system")), None, None)] if code.__class__ is str else []
    display = value.get("display")
    return rows + _text_row(param, display) if display else rows


def codeable_concept_rows(param: str, value: Any) -> list[Row]:
    if value.__class__ is not dict:
        return []
    rows: list[Row] = []
    for coding in _list(value.get("coding")):
        rows += coding_rows(param, coding)
    text = value.get("text")
    return rows + _text_row(param, text) if text else rows


def identifier_rows(param: str, value: Any) -> list[Row]:
    """(value, system); ``:text`` from type.text; ``:of-type`` as ``typeSystem|typeCode|value``."""
    if value.__class__ is not dict:
        return []
    ident = value.get("value")
    rows: list[Row] = [(param, ident, _str(value.get("system")), None, None)] if ident.__class__ is str else []
    id_type = value.get("type")
    if id_type.__class__ is dict:
        rows += _text_row(param, id_type.get("text"))
        if ident.__class__ is str:
            for coding in _list(id_type.get("coding")):
                if coding.__class__ is dict and coding.get("code").__class__ is str:
                    of_type = f"{_str(coding.get('system')) or ''}|{coding['code']}|{ident}"
                    rows.append((param + ":of-type", of_type, None, None, None))
    return rows


def contact_point_rows(param: str, value: Any) -> list[Row]:
    """(value, system) with the ContactPoint.system (phone, email…) as the token system."""
    if value.__class__ is not dict or value.get("value").__class__ is not str:
        return []
    return [(param, value["value"], _str(value.get("system")), None, None)]


def code_rows(param: str, value: Any, system: str | None = None) -> list[Row]:
    """A code/string/id/uri used as a token; ``system``: the CodeSystem a required binding implies."""
    if value.__class__ is not str or not value:
        return []
    return [(param, value, system, None, None)]


def boolean_rows(param: str, value: Any) -> list[Row]:
    if value is True:
        return [(param, "true", None, None, None)]
    if value is False:
        return [(param, "false", None, None, None)]
    return []


# ---------------------------------------------------------------------------------------------------
# _text / _content: folded words
# ---------------------------------------------------------------------------------------------------

MAX_WORDS = 300  # distinct words kept per parameter per resource, the first ones in document order
_TAG = re.compile(r"<[^>]*>")
_WORD = re.compile(r"[^\W_]+")  # a run of letters/digits


def xhtml_text(div: str) -> str:
    """The text of an XHTML fragment: tags (and comments) become spaces, entities are decoded
    (``&amp;``, ``&nbsp;``, ``&eacute;``, ``&#233;``, ``&#xE9;``)."""
    text = _TAG.sub(" ", div)
    return html.unescape(text) if "&" in text else text


# ASCII letters lowercased, digits kept, other ASCII → space; bytes ≥ 0x80 (UTF-8 sequences) kept.
_WORD_BYTES = bytes(
    c | 0x20 if 65 <= c <= 90 else c if 48 <= c <= 57 or 97 <= c <= 122 or c >= 128 else 32 for c in range(256)
)
_WORD_ASCII = str.maketrans({chr(c): chr(_WORD_BYTES[c]) for c in range(128)})


def words(text: str) -> list[str]:
    """The folded words of ``text`` in order: runs of letters/digits, each ``fold``-ed
    (``L'Hôpital Saint-Éloi`` → l, hopital, saint, eloi). The same on both sides: the words written
    at index time and those of a ``_text``/``_content`` search.

    Table-driven (a regex scan costs ~3x more): ASCII punctuation becomes spaces, then only the tokens
    holding non-ASCII characters go through ``fold`` and a Unicode-aware split (typographic quotes,
    guillemets, no-break spaces, accents written as combining marks).
    """
    if text.isascii():
        return text.translate(_WORD_ASCII).split()
    spaced = text.encode("utf-8", "surrogatepass").translate(_WORD_BYTES).decode("utf-8", "surrogatepass")
    out: list[str] = []
    for token in spaced.split():
        if token.isascii():
            out.append(token)
        else:
            out += _WORD.findall(fold(token))
    return out


def add_words(found: dict[str, None], text: str, limit: int = MAX_WORDS) -> bool:
    """Add the new words of ``text`` to ``found`` (insertion-ordered) up to ``limit``; False once full."""
    fresh = dict.fromkeys(words(text))
    if len(found) + len(fresh) <= limit:
        found.update(fresh)
    else:
        for word in fresh:
            if word not in found:
                if len(found) >= limit:
                    return False
                found[word] = None
    return len(found) < limit


# ---------------------------------------------------------------------------------------------------
# reference
# ---------------------------------------------------------------------------------------------------


def reference_rows(param: str, value: Any, target: str | None = None) -> list[Row]:
    """value = ``Type/id`` or the absolute URL, system = target type; ``:identifier`` rows.

    ``target`` is the parameter's only target type, used when the reference does not tell.
    """
    if value.__class__ is not dict:
        return []
    rows: list[Row] = []
    literal = value.get("reference")
    if literal.__class__ is str and len(literal) > 1 and literal[0] == "#":
        # A contained resource: the row says the element is present (:missing) and lets the indexer add
        # that resource's own entries under this parameter (chains evaluate inside contained resources).
        rows.append((param, literal, None, None, None))
    elif literal.__class__ is str:
        found = reference_value(literal)
        if found:
            declared = value.get("type")
            rows.append((param, found[0], found[1] or (declared if declared.__class__ is str else target),
                         _referenced_version(literal, found[0]), None))  # fmt: skip
    ident = value.get("identifier")
    if ident.__class__ is dict and ident.get("value").__class__ is str:
        rows.append((param + ":identifier", ident["value"], _str(ident.get("system")), None, None))
    return rows


def _referenced_version(literal: str, value: str) -> float | None:
    """The version of a versioned reference (``Patient/1/_history/2`` → 2), kept in the entry's ``low`` so an
    ``_include`` returns that version (search.html#versions); None for other references."""
    if len(literal) == len(value):
        return None
    version = literal[len(value) + 10 :]  # after "/_history/"
    return float(version) if version.isascii() and version.isdigit() and len(version) < 16 else None


def canonical_rows(param: str, value: Any, target: str | None = None) -> list[Row]:
    """A canonical/uri reference: the URL without ``|version`` (matched by any version), and for a versioned
    canonical the whole ``url|version`` too (``instantiates-canonical=url|1.1``, ``:below=url|1``)."""
    if value.__class__ is not str or not value:
        return []
    url, type_ = canonical_value(value)
    row = (param, url, type_ or target, None, None)
    return [row] if len(url) == len(value) else [row, (param, value, type_ or target, None, None)]


def resource_rows(param: str, value: Any, target: str | None = None) -> list[Row]:
    """A resource where a reference is expected (``Bundle.entry[0].resource``): ``Type/id``."""
    if value.__class__ is not dict or _str(value.get("id")) is None or _str(value.get("resourceType")) is None:
        return []
    return [(param, f"{value['resourceType']}/{value['id']}", value["resourceType"], None, None)]


# ---------------------------------------------------------------------------------------------------
# date: low/high = [low, high) in microseconds since the epoch, UTC.
# ---------------------------------------------------------------------------------------------------


def date_rows(param: str, value: Any) -> list[Row]:
    if value.__class__ is not str:
        return []
    found = date_range(value)
    return [(param, None, None, found[0], found[1])] if found else []


def period_rows(param: str, value: Any) -> list[Row]:
    """start's low .. end's high; an open end is -inf/+inf (an ongoing period)."""
    if value.__class__ is not dict:
        return []
    start, end = value.get("start"), value.get("end")
    low_range = date_range(start) if start.__class__ is str else None
    high_range = date_range(end) if end.__class__ is str else None
    if low_range is None and high_range is None:
        return []
    return [(param, None, None, low_range[0] if low_range else NEG_INF,
             high_range[1] if high_range else POS_INF)]  # fmt: skip


def timing_rows(param: str, value: Any) -> list[Row]:
    if value.__class__ is not dict:
        return []
    rows: list[Row] = []
    for event in _list(value.get("event")):
        rows += date_rows(param, event)
    return rows


# ---------------------------------------------------------------------------------------------------
# number / quantity: low/high = the precision range; value = canonical number or the unit code.
# ---------------------------------------------------------------------------------------------------


def number_rows(param: str, value: Any) -> list[Row]:
    """A stored number is an exact value (search.html#number): low = high = the value."""
    number = to_decimal(value)
    if number is None:
        return []
    exact = float(number)
    return [(param, canonical_number(number), None, exact, exact)]


def _bounds(quantity: Any) -> tuple[float, float] | None:
    """A quantity's exact value, opened on the side its comparator (``<``, ``>=``…) leaves open."""
    if quantity.__class__ is not dict:
        return None
    number = to_decimal(quantity.get("value"))
    if number is None:
        return None
    low = high = float(number)
    comparator = quantity.get("comparator")
    if comparator in ("<", "<="):
        return NEG_INF, high
    if comparator in (">", ">="):
        return low, POS_INF
    return low, high


def quantity_rows(param: str, value: Any) -> list[Row]:
    """value = the code (and the unit as a second row when it differs), system = the unit system."""
    bounds = _bounds(value)
    if bounds is None:
        return []
    system = _str(value.get("system"))
    return [(param, unit, system, bounds[0], bounds[1]) for unit in _units(value)]


def _units(quantity: dict) -> list[str | None]:
    code, unit = quantity.get("code"), quantity.get("unit")
    units = [u for u in (code, unit) if u.__class__ is str and u]
    if len(units) == 2 and units[0] == units[1]:
        units.pop()
    return units or [None]


def money_rows(param: str, value: Any) -> list[Row]:
    bounds = _bounds(value)
    if bounds is None:
        return []
    currency = value.get("currency")
    return [(param, currency if currency.__class__ is str else None, ISO_4217, bounds[0], bounds[1])]


def range_bounds(value: Any) -> tuple[float, float] | None:
    """A Range: low's low .. high's high, open sides infinite."""
    if value.__class__ is not dict:
        return None
    low, high = _bounds(value.get("low")), _bounds(value.get("high"))
    if low is None and high is None:
        return None
    return (low[0] if low else NEG_INF), (high[1] if high else POS_INF)


def range_quantity_rows(param: str, value: Any) -> list[Row]:
    bounds = range_bounds(value)
    if bounds is None:
        return []
    side = value.get("low") if value.get("low").__class__ is dict else value.get("high")
    side = side if side.__class__ is dict else {}
    return [(param, unit, _str(side.get("system")), bounds[0], bounds[1]) for unit in _units(side)]


def range_number_rows(param: str, value: Any) -> list[Row]:
    bounds = range_bounds(value)
    return [(param, None, None, bounds[0], bounds[1])] if bounds else []


# ---------------------------------------------------------------------------------------------------
# uri
# ---------------------------------------------------------------------------------------------------


def uri_rows(param: str, value: Any) -> list[Row]:
    if value.__class__ is not str or not value:
        return []
    return [(param, value, None, None, None)]


def canonical_uri_rows(param: str, value: Any) -> list[Row]:
    """A ``canonical`` in a uri parameter (``_profile``): as is, and without its ``|version`` when it has one
    (so the bare URL matches every version, ``url|version`` that version)."""
    if value.__class__ is not str or not value:
        return []
    cut = value.find("|")
    if cut <= 0:
        return [(param, value, None, None, None)]
    return [(param, value, None, None, None), (param, value[:cut], None, None, None)]


# ---------------------------------------------------------------------------------------------------
# composite: one row per combination of the components' values on the same element.
# ---------------------------------------------------------------------------------------------------

# A component value reduced to what the composite row keeps: (text, low, high).
Fragment = tuple[str | None, float | None, float | None]


def composite_fragments(param_type: str, rows: list[Row], param: str, first: bool) -> list[Fragment]:
    """The fragments of one component value from its rows (``:text``/``:of-type`` rows are dropped).

    token → ``system|code`` (folded unless it is the first component: a composite's later parts are
    matched as folded text); quantity → ``system|code`` + range; string → folded text; reference and
    uri → the value; date → range; number → the exact value as both ends (a coordinate, not a
    measurement: MolecularSequence's start/end).
    """
    out: list[Fragment] = []
    for name, value, system, low, high in rows:
        if name != param:
            continue
        if param_type == "token":
            text = f"{system or ''}|{value or ''}"
            out.append((text if first else fold(text), None, None))
        elif param_type == "quantity":
            out.append((f"{system or ''}|{value or ''}", low, high))
        elif param_type in ("string", "reference", "uri"):
            out.append((value, None, None))
        elif param_type == "date":
            out.append((None, low, high))
        elif param_type == "number" and value is not None:
            exact = float(value)
            out.append((None, exact, exact))
    return out


def composite_rows(param: str, parts: list[list[Fragment]]) -> list[Row]:
    """Rows of a composite from the fragments of each component (the cartesian product).

    value = the first component's text (``system|code`` of the token), system = the texts of the
    others joined by ``$`` (None when they have none), low = the first range's low, high = the last
    range's high (so ``chromosome$start$end`` keeps start in low and end in high).
    """
    rows: list[Row] = [(param, None, None, None, None)]
    for index, fragments in enumerate(parts):
        extended: list[Row] = []
        for _, value, system, low, high in rows:
            for text, f_low, f_high in fragments:
                if index == 0:
                    extended.append((param, text, None, f_low, f_high))
                    continue
                joined = system if text is None else text if system is None else f"{system}${text}"
                extended.append((param, value, joined, low if low is not None else f_low,
                                 f_high if f_high is not None else high))  # fmt: skip
        rows = extended
    return rows

"""Validation with the ``fhir.resources.R4B`` pydantic models, plus the FHIR JSON rules they skip.

R4B (4.3.0) models are used for R4 (4.0.1) resources whose shape did not change between the versions (see
``tools/compare_r4_r4b.py``). Before pydantic runs, one cheap pass over the JSON (``_Walk``) checks what the
models let through: JSON types of boolean/integer/decimal values (pydantic coerces ``"true"`` and ``"3"``),
``null``, empty strings/objects/arrays, python-only property names (``fhir_comments``, ``x__ext``), the
alignment of primitive arrays with their ``_x`` siblings, resource ids longer than 64, and ``resourceType``
outside resources. Nested resources (contained, Bundle.entry.resource, Parameters.parameter.resource) are
handed to the dispatcher and replaced by a placeholder for the model, so each nested resource gets the
validator its own type needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import types
import typing
from decimal import Decimal
from functools import cache
from typing import Any, NamedTuple

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension
from fhir.resources.R4B.meta import Meta
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase
from pydantic import ValidationError

from ..errors import Issue
from ._common import ID_RE, NAME_RE, Loc, Nested, describe, expression, is_base64, json_type, make_issue

# Kinds of a model field, as far as the JSON walk cares.
BOOL, INT, DEC, STR, CODE, XHTML, UUID, BASE64, ELEM, PEXT, RES, SKIP, REJECT = range(13)
_KIND_NAMES = {BOOL: "a boolean", INT: "an integer", DEC: "a number"}

# Fix-ups of R4B fields that differ from R4 (see ``_r4_fixes``).
NO_FIX, STRIP, META, AS_UUID4 = range(4)

_UUID4 = "urn:uuid:00000000-0000-4000-8000-000000000000"
_UUID_RE = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_STRIP = object()

# R4 ``code``: its regex ``[^\s]+(\s[^\s]+)*`` is an XML Schema one, where ``\s`` is only space, tab, CR and
# LF. The R4B pattern runs with Unicode ``\s`` and rejects valid codes containing U+00A0 (official example
# Bundle-v2-valuesets); we check codes ourselves and ignore that pydantic error.
_CODE_RE = re.compile(r"[^ \t\r\n]+([ \t\r\n][^ \t\r\n]+)*")
_R4B_CODE_PATTERN = r"^[^\s]+(\s[^\s]+)*$"


class Field(NamedTuple):
    kind: int
    model: type[FHIRAbstractModel] | None
    is_list: bool
    fix: int = NO_FIX
    group: str = ""  # choice group of a META fix-up ("value" for valueMeta)


def unwrap(annotation: Any) -> tuple[bool, Any, tuple]:
    """``Optional[List[Annotated[T, meta]]]`` -> (is_list, T, meta)."""
    is_list, meta = False, ()
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or isinstance(annotation, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        elif origin in (list, typing.List):  # noqa: UP006 - the models use typing.List
            is_list, annotation = True, typing.get_args(annotation)[0]
        elif origin is typing.Annotated:
            meta = annotation.__metadata__
            annotation = typing.get_args(annotation)[0]
        else:
            return is_list, annotation, meta


def _field(name: str, annotation: Any) -> Field:
    is_list, inner, meta = unwrap(annotation)
    if name.endswith("__ext"):
        return Field(PEXT, FHIRPrimitiveExtension, is_list)
    if isinstance(inner, type) and issubclass(inner, FhirBase):
        model = inner.get_model_klass()
        return Field(RES if model.__name__ == "Resource" else ELEM, model, is_list)
    if inner is bool:
        return Field(BOOL, None, is_list)
    if inner is int:
        return Field(INT, None, is_list)
    if inner is Decimal:
        return Field(DEC, None, is_list)
    names = {type(m).__name__ for m in meta}
    if "Xhtml" in names:
        return Field(XHTML, None, is_list)
    if "Base64Binary" in names:
        # the model decodes with python's lenient base64 decoder, which skips invalid characters
        return Field(BASE64, None, is_list)
    if "Code" in names:
        return Field(CODE, None, is_list)
    return Field(STR, None, is_list)


def raw_specs(model: type[FHIRAbstractModel]) -> dict[str, Field]:
    """JSON property name -> Field, as the R4B model declares them."""
    specs = {
        (info.alias or name): _field(name, info.annotation)
        for name, info in model.model_fields.items()
        if name != "fhir_comments"
    }
    if model.has_resource_base():
        specs["resourceType"] = Field(SKIP, None, False)
    return specs


# Differences between R4 and the R4B models of the types we validate with them, as found by
# tools/compare_r4_r4b.py; keyed by R4B class name.
# R4B-only elements: unknown in R4.
_R4B_ONLY = {
    "ActivityDefinition": ("subjectCanonical",),
    "PlanDefinition": ("subjectCanonical",),
    "PlanDefinitionAction": ("subjectCanonical",),
    "Extension": ("valueCodeableReference", "valueRatioRange"),
    "ElementDefinitionExample": ("valueCodeableReference", "valueRatioRange"),
    "ElementDefinition": tuple(
        g + t for g in ("defaultValue", "fixed", "pattern") for t in ("CodeableReference", "RatioRange")
    ),
}
# R4 Meta-typed choices that R4B dropped: checked on their own, then hidden from the model.
_R4_META = {
    "Extension": (("valueMeta", "value"),),
    "ElementDefinitionExample": (("valueMeta", "value"),),
    "ElementDefinition": tuple((g + "Meta", g) for g in ("defaultValue", "fixed", "pattern")),
}
# R4 ``uuid`` (``urn:uuid:`` + lowercase hex, any version) is a python UUID4 in R4B, which rejects valid
# R4 values (version 1...) and accepts invalid ones (bare or uppercase): we check the R4 regex instead.
_R4_UUID = {
    "Extension": ("valueUuid",),
    "ElementDefinitionExample": ("valueUuid",),
    "ElementDefinition": ("defaultValueUuid", "fixedUuid", "patternUuid"),
    "ParametersParameter": ("valueUuid",),
    "TaskInput": ("valueUuid",),
    "TaskOutput": ("valueUuid",),
    "StructureMapGroupRuleSource": ("defaultValueUuid",),
}


def _r4_fixes(model: type[FHIRAbstractModel], specs: dict[str, Field]) -> None:
    name = model.__name__
    for key in _R4B_ONLY.get(name, ()):
        specs[key] = Field(REJECT, None, False)
    for key, group in _R4_META.get(name, ()):
        specs[key] = Field(ELEM, Meta, False, META, group)
    for key in _R4_UUID.get(name, ()):
        specs[key] = Field(UUID, None, False, AS_UUID4)
    if name == "Extension":
        # R4 allows ``_valueString`` etc. next to an extension's primitive value (R4 JSON format 2.6.2.7:
        # any primitive may carry id/extensions) and the official examples use it (Bundle-v2-valuesets:
        # translations of concept displays). The R4B Extension model declares no ``valueX__ext`` fields and
        # would reject them: we check them here and strip them before pydantic runs.
        for key, field in list(specs.items()):
            if key.startswith("value") and field.kind < ELEM:
                specs["_" + key] = Field(PEXT, FHIRPrimitiveExtension, False, STRIP)


@cache
def _specs(model: type[FHIRAbstractModel]) -> dict[str, Field]:
    """JSON property name -> Field, with the R4 fix-ups."""
    specs = raw_specs(model)
    _r4_fixes(model, specs)
    return specs


@cache
def model_class(resource_type: str) -> type[FHIRAbstractModel]:
    return get_fhir_model_class(resource_type)


@cache
def _placeholder() -> FHIRAbstractModel:
    """Stands in for a nested resource once the dispatcher has validated it. Any resource type would do (the
    containing models accept any resource there); a ready-made instance is passed through without work."""
    return model_class("Basic").model_validate({"resourceType": "Basic", "code": {"text": "placeholder"}})


def warm(resource_type: str) -> None:
    """Import the model, build its pydantic validators and our field table for the whole type tree."""
    model = model_class(resource_type)
    seen: set[type] = set()
    stack = [model]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(f.model for f in _specs(cls).values() if f.model is not None)
    with contextlib.suppress(ValidationError):
        model.model_validate({"resourceType": resource_type})


class _Walk:
    """State of one pass over a resource: issues found and edits to make before pydantic runs."""

    __slots__ = ("edits", "issues", "model_issues", "nested", "root")

    def __init__(self, root: str, nested: Nested) -> None:
        self.root = root
        self.nested = nested
        self.issues: list[Issue] = []
        self.model_issues: list[Issue] = []  # from models run on fixed-up parts, merged like the main one
        self.edits: list[tuple[Loc, Any]] = []

    def add(self, code: str, message: str, loc: Loc, *, raw_last: bool = False) -> None:
        self.issues.append(make_issue(code, message, self.root, loc, raw_last=raw_last))

    def walk(self, obj: dict, model: type[FHIRAbstractModel], loc: Loc) -> None:
        specs = _specs(model)
        for key, value in obj.items():
            field = specs.get(key)
            if field is None:
                self.unknown(key, model, loc)
            elif value is None:
                self.add("structure", f"Element '{key}' is null (FHIR JSON has no null values)", (*loc, key))
            elif not field.is_list:
                self.item(value, field, (*loc, key))
                if field.fix:
                    self.fixup(obj, key, value, field, loc)
            elif type(value) is list:
                self.items(obj, key, value, field, loc)
            else:
                self.add("structure", f"Element '{key}' must be an array", (*loc, key))

    def items(self, obj: dict, key: str, value: list, field: Field, loc: Loc) -> None:
        if not value:
            self.add("structure", f"Array '{key}' is empty (FHIR JSON has no empty arrays)", (*loc, key))
            return
        if field.kind < ELEM or field.kind == PEXT:
            self.check_alignment(obj, key, value, loc)
        for i, item in enumerate(value):
            if item is not None:
                self.item(item, field, (*loc, key, i))
            elif field.kind >= ELEM and field.kind != PEXT:
                self.add("structure", f"Null in array '{key}' of complex values", (*loc, key, i))

    def item(self, value: Any, field: Field, loc: Loc) -> None:
        kind = field.kind
        if kind in (ELEM, PEXT):
            if type(value) is not dict:
                name = field.model.__name__  # type: ignore[union-attr]
                self.add("structure", f"Expected an object ({name}) but found {json_type(value)}", loc)
            elif value:
                self.walk(value, field.model, loc)  # type: ignore[arg-type]
            else:
                self.add("structure", "Empty object (FHIR JSON has no empty objects)", loc)
        elif kind == STR:
            if type(value) is not str:
                self.wrong_type(value, kind, loc)
            elif not value:
                self.add("value", "Empty string (FHIR JSON has no empty strings)", loc)
        elif kind == CODE:
            if type(value) is not str:
                self.wrong_type(value, kind, loc)
            elif not value:
                self.add("value", "Empty string (FHIR JSON has no empty strings)", loc)
            elif not _CODE_RE.fullmatch(value):
                self.add("value", f"Invalid code {describe(value)}: no leading, trailing or double spaces", loc)
        elif kind == RES:
            self.resource(value, loc)
        elif kind == BOOL:
            if type(value) is not bool:
                self.wrong_type(value, kind, loc)
        elif kind == INT:
            if type(value) is not int:
                self.wrong_type(value, kind, loc)
        elif kind == DEC:
            if type(value) is bool or not isinstance(value, Decimal | int | float):
                self.wrong_type(value, kind, loc)
        else:
            self.special(value, kind, loc)

    def special(self, value: Any, kind: int, loc: Loc) -> None:
        """The rare kinds, kept out of ``item`` to keep the common ones quick."""
        if kind == REJECT:
            self.add("structure", f"Unknown element '{loc[-1]}' (it exists in R4B, not in R4)", loc)
        elif type(value) is not str:
            self.wrong_type(value, kind, loc)
        elif kind == XHTML:
            if not value.lstrip().startswith("<div"):
                self.add("value", "Narrative div must be an XHTML <div> element", loc)
        elif kind == UUID and not _UUID_RE.fullmatch(value):
            self.add("value", f"Invalid uuid {describe(value)}: expected urn:uuid:<lowercase uuid>", loc)
        elif kind == BASE64 and not is_base64(value):
            self.add("value", f"Invalid base64Binary value {describe(value)}", loc)

    def wrong_type(self, value: Any, kind: int, loc: Loc) -> None:
        message = f"Expected {_KIND_NAMES.get(kind, 'a string')} but found {json_type(value)} {describe(value)}"
        self.add("structure", message, loc)

    def unknown(self, key: str, model: type[FHIRAbstractModel], loc: Loc) -> None:
        if key == "resourceType":
            self.add("structure", f"Unknown element 'resourceType' in {model.__name__}", (*loc, key))
        else:
            self.add("structure", f"Unknown element '{key}'", (*loc, key), raw_last=True)

    def check_alignment(self, obj: dict, key: str, value: list, loc: Loc) -> None:
        """A primitive array and its ``_x`` sibling line up; a null must be matched by a value opposite."""
        ext_side = key.startswith("_")
        other = obj.get(key[1:] if ext_side else "_" + key)
        if other is not None and (type(other) is not list or len(other) != len(value)):
            if ext_side:
                message = f"Array '{key}' does not line up with '{key[1:]}'"
                self.add("structure", message, (*loc, key), raw_last=True)
            other = None
        if None not in value:
            return
        for i, item in enumerate(value):
            if item is None and (other is None or other[i] is None) and not (ext_side and other is not None):
                opposite = key[1:] if ext_side else "_" + key
                self.add("structure", f"Null in '{key}' without a matching '{opposite}' value", (*loc, key, i))

    def resource(self, value: Any, loc: Loc) -> None:
        """Hand a nested resource to the dispatcher; the model then sees a placeholder."""
        if type(value) is dict and value:
            self.issues.extend(self.nested(value, expression(self.root, loc)))
        else:
            self.add("structure", "Expected a resource (a JSON object with resourceType)", loc)
        self.edits.append((loc, _placeholder()))

    def fixup(self, obj: dict, key: str, value: Any, field: Field, loc: Loc) -> None:
        """Apply an R4 fix-up (see ``_r4_fixes``): check the R4 element ourselves, adapt it for the model."""
        here = (*loc, key)
        if field.fix == AS_UUID4:
            self.edits.append((here, _UUID4))
            return
        if field.fix == META:
            others = [k for k in obj if k != key and k.startswith(field.group) and k[len(field.group) :][:1].isupper()]
            if others:
                self.add("structure", f"Only one of {field.group}[x] may be present: {key}, {others[0]}", here)
            # keep the choice present for the model (some are required), as a value it accepts
            self.edits.append(((*loc, field.group + "Boolean"), True))
        self.edits.append((here, _STRIP))
        if type(value) is dict and value:
            try:
                field.model.model_validate(value)  # type: ignore[union-attr]
            except ValidationError as exc:
                self.model_issues.extend(from_pydantic(exc, self.root, value, here))


def _edited(data: dict, edits: list[tuple[Loc, Any]]) -> dict:
    """A copy of ``data`` with the edits applied, copying only the containers on the edited paths."""
    root = dict(data)
    copies = {id(root)}
    for loc, new in edits:
        node: Any = root
        for seg in loc[:-1]:
            child = node[seg]
            if id(child) not in copies:
                child = list(child) if type(child) is list else dict(child)
                node[seg] = child
                copies.add(id(child))
            node = child
        if new is _STRIP:
            del node[loc[-1]]
        else:
            node[loc[-1]] = new
    return root


# pydantic error types -> OperationOutcome issue codes; anything else is a "value" problem.
_STRUCTURE_ERRORS = {"extra_forbidden", "list_type", "dict_type", "model_type", "model_attributes_type"}
_REQUIRED_ERRORS = {"missing", "model_field_validation.missing"}
# resourceType outside a resource: reported by the walk.
_IGNORED_ERRORS = {"fhir-validation-wrong-resource-type"}
_FIELD_LIST = re.compile(r"'([A-Za-z0-9_]+)'")


def _clean_loc(loc: tuple, data: Any) -> Loc:
    """Keep the segments of a pydantic ``loc`` that are keys/indexes of the data (plus a missing element's
    name at the end): what remains is the JSON path, without pydantic-internal segments such as
    ``function-after[...]``, union tags or ``root``."""
    out: list[str | int] = []
    node = data
    for i, seg in enumerate(loc):
        in_list = type(node) is list and type(seg) is int and seg < len(node)
        if in_list or (type(node) is dict and seg in node):
            out.append(seg)
            node = node[seg]
        elif i == len(loc) - 1 and isinstance(seg, str) and NAME_RE.fullmatch(seg):
            out.append(seg)
    return tuple(out)


def _choice(msg: str, data: Any) -> tuple[str, list[str]]:
    """Choice group name and the names present, from a one-of-many error message."""
    names = _FIELD_LIST.findall(msg)
    present = [n for n in names if type(data) is dict and n in data]
    # character-wise prefix on purpose: ['deceasedBoolean', 'deceasedDateTime'] -> 'deceased'
    return os.path.commonprefix(names) if names else "value", present  # noqa: RUF071


def _issue(err: dict, root: str, prefix: Loc, loc: Loc, data: Any) -> Issue:
    """One issue from one pydantic error at ``loc`` in ``data`` (itself at ``prefix`` under ``root``)."""
    kind = err["type"]
    here = (*prefix, *loc)
    name = next((s for s in reversed(loc) if isinstance(s, str)), "")
    msg = str(err.get("msg", "")).removeprefix("Value error, ").strip()
    if kind == "extra_forbidden":
        return make_issue("structure", f"Unknown element '{name}'", root, here, raw_last=True)
    if kind in _REQUIRED_ERRORS:
        return make_issue("required", f"Missing required element '{name}'", root, here)
    if msg.startswith("Expect any of field value from this list"):  # a required value[x] is absent
        group, _ = _choice(msg, _at(data, loc))
        return make_issue("required", f"Missing required element '{group}[x]'", root, (*here, group))
    if msg.startswith("Any of one field value is expected"):  # several value[x] are present
        group, present = _choice(msg, _at(data, loc))
        where = (*here, present[-1]) if present else here
        return make_issue("structure", f"Only one of {group}[x] may be present: {', '.join(present)}", root, where)
    code = "structure" if kind in _STRUCTURE_ERRORS else "value"
    if msg.endswith("value string does not match spec regex."):  # "Date value string ...", "Instant ..."
        fhir_type = msg[0].lower() + msg.split()[0][1:]
        return make_issue(code, f"Invalid {fhir_type} value {describe(err.get('input'))}", root, here)
    if "input" in err and not isinstance(err["input"], dict | list):
        return make_issue(code, f"Invalid value {describe(err['input'])} for '{name}': {msg}", root, here)
    return make_issue(code, f"Invalid '{name}': {msg}", root, here)


def _at(data: Any, loc: Loc) -> Any:
    for seg in loc:
        try:
            data = data[seg]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def from_pydantic(exc: ValidationError, root: str, data: Any, prefix: Loc = ()) -> list[Issue]:
    """Issues for a pydantic error raised on ``data``, which sits at ``prefix`` under ``root``."""
    issues = []
    for err in exc.errors(include_url=False):
        if err["type"] in _IGNORED_ERRORS:
            continue
        if err["type"] == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == _R4B_CODE_PATTERN:
            continue  # checked by the walk, with the R4 meaning of \s
        issues.append(_issue(err, root, prefix, _clean_loc(err["loc"], data), data))
    return issues


def _merge(walk: list[Issue], model: list[Issue]) -> list[Issue]:
    """Walk issues first, then model issues not about an element the walk already reported on."""
    if not walk or not model:
        return walk or model
    seen = [i.expression[0] for i in walk]
    nested = tuple(e + c for e in seen for c in ".[")

    def known(expr: str) -> bool:
        return expr in seen or expr.startswith(nested) or any(e.startswith(expr + "[") for e in seen)

    return walk + [i for i in model if not known(i.expression[0])]


def check(resource: dict, root: str, nested: Nested) -> list[Issue]:
    """Issues of one resource whose type has an R4B model equivalent to R4."""
    model = model_class(resource["resourceType"])
    walk = _Walk(root, nested)
    rid = resource.get("id")
    if type(rid) is str and not ID_RE.fullmatch(rid):
        walk.add("value", f"Invalid id {describe(rid)}: 1-64 characters A-Z a-z 0-9 - .", ("id",))
    walk.walk(resource, model, ())
    data = _edited(resource, walk.edits) if walk.edits else resource
    found = walk.model_issues
    try:
        model.model_validate(data)
    except ValidationError as exc:
        found += from_pydantic(exc, root, data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # The models raise plain exceptions on some malformed input: that is still bad content, not a 500.
        found.append(make_issue("structure", f"Invalid resource: {exc}", root, ()))
    return _merge(walk.issues, found)

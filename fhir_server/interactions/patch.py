"""The patch interaction (http://hl7.org/fhir/R4/http.html#patch): JSON Patch and FHIRPath Patch.

* ``application/json-patch+json``: JSON Patch (RFC 6902) over the resource's JSON;
* ``application/fhir+json`` (or ``application/json``) with a ``Parameters`` body: FHIRPath Patch
  (http://hl7.org/fhir/R4/fhirpatch.html), paths evaluated with fhirpathpy.

Both appliers are pure (``apply_json_patch``, ``apply_fhirpath_patch``): they work on a copy and never touch
their input. The interaction reads the current version, applies the patch, checks that ``resourceType`` and
``id`` are unchanged, validates the result exactly as an update would and writes it as a new version (history
``request.method`` PATCH), all in one store transaction that expects the version it read.

Status codes (RFC 5789 section 2.2): a malformed patch document is a 400, a content type that is neither
patch format a 415, and a well-formed patch that cannot be applied to this resource (a JSON Patch ``test``
that fails, a path that selects nothing where something is needed, an index out of range, a result that is
not a valid resource) a 422.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

from ..errors import (
    FhirError,
    bad_request,
    gone,
    method_not_allowed,
    not_found,
    precondition_failed,
    unprocessable,
    unsupported_media_type,
)
from ..fhirjson import loads
from ..store import Transaction
from ..store.query import Search
from ..validation import validate_resource
from .context import Context, ResourceResult
from .crud import (
    _criteria,
    _deleted_headers,
    _parse_etag,
    _single_match,
    _transact,
    _write,
    check_resource_type,
    refuse_immutable,
)

JSON_PATCH = "application/json-patch+json"
_FHIR_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}

Patcher = Callable[[dict], dict]


# --- the interaction ---------------------------------------------------------------------------------


def parse_patch(body: bytes, content_type: str | None, max_depth: int = 64) -> Patcher:
    """The patch a request carries, as a function from the current resource to the patched one.

    The kind of patch comes from the Content-Type (415 if neither); the document's structure is checked
    here (400) so that a malformed patch fails before any store work. No Content-Type means FHIR JSON, as
    for every other body this server takes.
    """
    mime, charset = _media_type(content_type)
    if charset is not None and charset not in ("utf-8", "utf8"):
        raise unsupported_media_type(f"charset {charset!r} is not supported: patch documents are UTF-8 JSON")
    if mime == JSON_PATCH:
        operations = _parse_json_body(body, max_depth, "a JSON Patch document (a JSON array of operations)")
        _check_json_patch(operations)
        return lambda resource: apply_json_patch(resource, operations)
    if mime in _FHIR_JSON_TYPES:
        parameters = _parse_json_body(body, max_depth, "a FHIRPath Patch (a Parameters resource)")
        if isinstance(parameters, list):
            raise bad_request(f"A JSON array is a JSON Patch document: send it as Content-Type {JSON_PATCH}")
        if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
            raise bad_request(
                "A FHIRPath Patch is a Parameters resource "
                f"(or send a JSON Patch document as Content-Type {JSON_PATCH})"
            )
        operations = _fhirpath_operations(parameters)
        return lambda resource: _run_fhirpath_patch(resource, operations)
    raise unsupported_media_type(
        f"Content-Type {content_type!r} is not a supported patch format: send {JSON_PATCH} (JSON Patch) "
        "or application/fhir+json with a Parameters resource (FHIRPath Patch)"
    )


async def patch(
    ctx: Context, type_: str, id_: str, body: bytes, content_type: str | None, if_match: str | None = None
) -> ResourceResult:
    """``PATCH [base]/[type]/[id]``: 404 if unknown, 410 if deleted, 412 if If-Match names another version."""
    refuse_immutable(type_, "patch")
    patcher = parse_patch(body, content_type, ctx.settings.max_json_depth)
    expected = _parse_etag(if_match) if if_match else None

    async def work(tx: Transaction) -> ResourceResult:
        return await patch_in(tx, type_, id_, patcher, expected)

    return await _transact(ctx, work)


async def conditional_patch(
    ctx: Context,
    type_: str,
    criteria: list[tuple[str, str]],
    body: bytes,
    content_type: str | None,
    if_match: str | None = None,
) -> ResourceResult:
    """``PATCH [base]/[type]?criteria``: the one match is patched; no match 404, several 412."""
    refuse_immutable(type_, "patch")
    if not criteria:
        raise bad_request("A conditional patch needs search criteria in the URL")
    patcher = parse_patch(body, content_type, ctx.settings.max_json_depth)
    query = _criteria(type_, criteria)
    expected = _parse_etag(if_match) if if_match else None

    async def work(tx: Transaction) -> ResourceResult:
        return await conditional_patch_in(tx, type_, query, patcher, expected)

    return await _transact(ctx, work)


async def conditional_patch_in(
    tx: Transaction, type_: str, query: Search, patcher: Patcher, expected: int | None = None
) -> ResourceResult:
    refuse_immutable(type_, "patch")
    found = await _single_match(tx, query)
    if found is None:
        raise not_found(f"No {type_} matches the conditional patch criteria")
    return await patch_in(tx, type_, found, patcher, expected, CONDITIONALLY_PATCHABLE.get(type_))


#: What a conditional PATCH may change, per type (PDSm4DMP: a document found by its identifier has its
#: status, its visibility labels and its archive flag updated, nothing else; anything else is a 405).
CONDITIONALLY_PATCHABLE: dict[str, frozenset[str]] = {
    "DocumentReference": frozenset({"status", "securityLabel", "extension"}),
}
#: The extensions a conditional PATCH of a document may set or remove (the archive flag): other extensions
#: stay as they are. The PDSm4DMP extension's canonical is not in the examples this project has, so the
#: project's own is listed; add the published one here when it is confirmed.
ARCHIVE_EXTENSIONS = frozenset({"https://github.com/fhir-server/fhir-server/StructureDefinition/mes-document-archived"})


def _check_patchable(before: dict, after: dict, allowed: frozenset[str], type_: str) -> None:
    changed = {k for k in before.keys() | after.keys() if k != "meta" and before.get(k) != after.get(k)}
    if "extension" in changed and allowed >= {"extension"}:
        kept = [
            [e for e in d.get("extension") or () if e.get("url") not in ARCHIVE_EXTENSIONS] for d in (before, after)
        ]
        if kept[0] == kept[1]:  # only the archive extension changed
            changed.discard("extension")
    refused = sorted(changed - (allowed - {"extension"}))
    if refused:
        shown = ", ".join(sorted(allowed - {"extension"}))
        raise method_not_allowed(
            f"A conditional PATCH of a {type_} may change only {shown} and the archive extension; "
            f"this one changes {', '.join(refused)}"
        )


async def patch_in(
    tx: Transaction,
    type_: str,
    id_: str,
    patcher: Patcher,
    expected: int | None = None,
    patchable: frozenset[str] | None = None,
) -> ResourceResult:
    """Patch inside a unit of work: read current, apply, validate, write expecting that version
    (``patchable``: the only elements the patch may change, else 405)."""
    refuse_immutable(type_, "patch")
    current = await tx.read_current(type_, id_)
    if current is None:
        raise not_found(f"{type_}/{id_} is not known")
    if current.deleted:
        raise gone(f"{type_}/{id_} was deleted", headers=_deleted_headers(current))
    if expected is not None and current.version != expected:
        raise precondition_failed(
            f"If-Match expects version {expected} of {type_}/{id_}, the server has version {current.version}"
        )
    assert current.body is not None
    resource = loads(current.body, max_depth=1 << 20)  # stored, so already checked
    patched = patcher(resource)
    if not isinstance(patched, dict):
        raise unprocessable("The patched document is not a JSON object (a FHIR resource)")
    _prune(patched)  # FHIR JSON has no empty objects or arrays: what a patch emptied is gone
    check_unchanged_identity(patched, type_, id_)
    if patchable is not None:
        _check_patchable(loads(current.body, max_depth=1 << 20), patched, patchable, type_)
    try:
        validate_resource(patched)
    except FhirError as exc:  # the patch is well-formed, its result is not a valid resource
        raise FhirError(422, exc.issues, exc.headers) from None
    return ResourceResult(await _write(tx, type_, id_, patched, "PATCH", current), created=False)


def check_unchanged_identity(patched: dict, type_: str, id_: str) -> None:
    """A patch may not change what the resource is: its ``resourceType`` and ``id`` (400)."""
    check_resource_type(patched, type_)
    if patched.get("id") != id_:
        raise bad_request(
            f"The patch changes the resource id (to {patched.get('id')!r}): the id of {type_}/{id_} cannot be patched",
            expression=("id",),
        )


def _media_type(content_type: str | None) -> tuple[str, str | None]:
    if content_type is None:
        return "application/fhir+json", None
    mime, *params = content_type.split(";")
    charset = None
    for param in params:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return mime.strip().lower().replace(" ", "+"), charset


def _parse_json_body(body: bytes, max_depth: int, what: str) -> Any:
    if not body.strip():
        raise bad_request(f"The request body is empty: {what} is expected")
    return loads(body, max_depth=max_depth)


def _prune(node: Any, companion: bool = False) -> None:
    """Drop empty objects and arrays, recursively. In a ``_x`` companion array an emptied item becomes
    null (it must stay aligned with its values), and a companion left with only nulls is dropped."""
    if isinstance(node, dict):
        for key in list(node):
            value = node[key]
            if isinstance(value, dict | list):
                _prune(value, key.startswith("_"))
                if not value or (key.startswith("_") and isinstance(value, list) and all(v is None for v in value)):
                    del node[key]
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _prune(item)
        if companion:
            node[:] = [None if isinstance(item, dict | list) and not item else item for item in node]
        else:
            node[:] = [item for item in node if not (isinstance(item, dict | list) and not item)]


# --- JSON Patch (RFC 6902) ---------------------------------------------------------------------------

_JSON_PATCH_OPS = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")


def apply_json_patch(resource: dict, operations: object) -> dict:
    """Apply a JSON Patch document (RFC 6902) to a copy of ``resource``: the patched document.

    A malformed document raises a 400, an operation that cannot be applied (missing target, index out of
    range, failed ``test``) a 422; both name the operation's index and path.
    """
    _check_json_patch(operations)
    assert isinstance(operations, list)
    doc: Any = copy.deepcopy(resource)
    for i, op in enumerate(operations):
        doc = _json_patch_op(doc, op, i)
    return doc


def _check_json_patch(operations: object) -> None:
    if not isinstance(operations, list):
        raise bad_request("A JSON Patch document is a JSON array of operations")
    for i, op in enumerate(operations):
        if not isinstance(op, dict):
            raise bad_request(f"JSON Patch operation {i} is not a JSON object")
        name = op.get("op")
        if not isinstance(name, str) or name not in _JSON_PATCH_OPS:  # {"op": {}} is unhashable: 400, not 500
            known = ", ".join(_JSON_PATCH_OPS)
            raise bad_request(f"JSON Patch operation {i}: 'op' must be one of {known} (got {name!r})")
        for member in ("path", *_JSON_PATCH_OPS[name]):
            if member not in op:
                raise bad_request(f"JSON Patch operation {i} ({name}): '{member}' is missing")
        for member in ("path", "from"):
            if member in op and (member == "path" or name in ("move", "copy")):
                _pointer(op[member], i, name)


def _pointer(value: object, i: int, op: str) -> list[str]:
    """A JSON Pointer (RFC 6901) → its reference tokens (400 if malformed)."""
    if not isinstance(value, str):
        raise bad_request(f"JSON Patch operation {i} ({op}): a JSON Pointer must be a string, got {value!r}")
    if value == "":
        return []
    if not value.startswith("/"):
        raise bad_request(f"JSON Patch operation {i} ({op}): JSON Pointer {value!r} must start with '/'")
    tokens = value[1:].split("/")
    for token in tokens:
        if re.search(r"~(?![01])", token):
            raise bad_request(f"JSON Patch operation {i} ({op}): invalid '~' escape in JSON Pointer {value!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _json_patch_op(doc: Any, op: dict, i: int) -> Any:
    name = op["op"]
    path = op["path"]
    tokens = _pointer(path, i, name)

    def fail(message: str) -> FhirError:
        return unprocessable(f"JSON Patch operation {i} ({name} at {path!r}): {message}")

    if name == "test":
        found = _pointer_get(doc, tokens, fail)
        if not json_equal(found, op["value"]):
            raise fail(f"test failed: the value is {found!r}, not {op['value']!r}")
        return doc
    if name == "remove":
        if not tokens:
            raise fail("the whole document cannot be removed")
        _pointer_remove(doc, tokens, fail)
        return doc
    if name == "replace":
        _pointer_get(doc, tokens, fail)  # the target must exist
        if not tokens:
            return copy.deepcopy(op["value"])
        parent, last = _pointer_parent(doc, tokens, fail)
        parent[_index(parent, last, fail) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        return doc
    if name == "add":
        return _pointer_add(doc, tokens, copy.deepcopy(op["value"]), fail)
    source = _pointer(op["from"], i, name)
    value = copy.deepcopy(_pointer_get(doc, source, fail))
    if name == "move":
        if tokens[: len(source)] == source and len(tokens) > len(source):
            raise fail(f"cannot move {op['from']!r} into one of its own children")
        if tokens == source:
            return doc
        _pointer_remove(doc, source, fail)
    return _pointer_add(doc, tokens, value, fail)


def _index(array: list, token: str, fail: Callable[[str], FhirError], *, for_add: bool = False) -> int:
    if token == "-" and for_add:
        return len(array)
    if not _ARRAY_INDEX.fullmatch(token):
        raise fail(f"{token!r} is not an array index")
    index = int(token)
    if index > len(array) or (index == len(array) and not for_add):
        raise fail(f"index {index} is out of range (the array has {len(array)} items)")
    return index


def _pointer_get(doc: Any, tokens: list[str], fail: Callable[[str], FhirError]) -> Any:
    node = doc
    for depth, token in enumerate(tokens):
        if isinstance(node, dict):
            if token not in node:
                raise fail(f"no member {token!r} in {_where(tokens[:depth])}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, fail)]
        else:
            raise fail(f"{_where(tokens[:depth])} is neither an object nor an array")
    return node


def _where(tokens: list[str]) -> str:
    if not tokens:
        return "the document"
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def _pointer_parent(doc: Any, tokens: list[str], fail: Callable[[str], FhirError]) -> tuple[Any, str]:
    parent = _pointer_get(doc, tokens[:-1], fail)
    if not isinstance(parent, dict | list):
        raise fail(f"the parent of the target is {parent!r}, neither an object nor an array")
    return parent, tokens[-1]


def _pointer_add(doc: Any, tokens: list[str], value: Any, fail: Callable[[str], FhirError]) -> Any:
    if not tokens:
        return value
    parent, last = _pointer_parent(doc, tokens, fail)
    if isinstance(parent, list):
        parent.insert(_index(parent, last, fail, for_add=True), value)
    else:
        parent[last] = value
    return doc


def _pointer_remove(doc: Any, tokens: list[str], fail: Callable[[str], FhirError]) -> Any:
    parent, last = _pointer_parent(doc, tokens, fail)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, fail))
    if last not in parent:
        raise fail(f"no member {last!r} to remove")
    return parent.pop(last)


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality (RFC 6902 ``test``): numbers by value, but never a boolean for a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float | Decimal) and isinstance(b, int | float | Decimal):
        return Decimal(str(a)) == Decimal(str(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# --- FHIRPath Patch (http://hl7.org/fhir/R4/fhirpatch.html) ------------------------------------------

_FHIRPATH_OPS = {
    # operation type → its parts besides "type", all required
    "add": ("path", "name", "value"),
    "insert": ("path", "value", "index"),
    "delete": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "source", "destination"),
}
_INTEGER_TYPES = ("valueInteger", "valueUnsignedInt", "valuePositiveInt")


@dataclass(frozen=True)
class _Value:
    """The ``value`` of an operation: a ``value[x]`` (with its ``_value[x]``), a resource, or parts."""

    type: str | None  # "Date", "CodeableConcept": the [x] of value[x]; None for a resource or parts
    data: Any = None
    ext: Any = None
    parts: tuple = ()


@dataclass(frozen=True)
class _Operation:
    index: int
    type: str
    path: str
    ast: dict
    name: str | None = None
    value: _Value | None = None
    at: int | None = None  # insert index
    source: int | None = None
    destination: int | None = None

    def fail(self, message: str) -> FhirError:
        return unprocessable(
            f"FHIRPath Patch operation {self.index} ({self.type} at {self.path!r}): {message}",
            expression=(f"Parameters.parameter[{self.index}]",),
        )


def apply_fhirpath_patch(resource: dict, parameters: object) -> dict:
    """Apply a FHIRPath Patch (a Parameters resource) to a copy of ``resource``: the patched resource.

    Operations run in order, each on the result of the previous one. A malformed Parameters raises a 400, an
    operation that cannot be applied a 422; both name the operation's index and path.
    """
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise bad_request("A FHIRPath Patch is a Parameters resource")
    return _run_fhirpath_patch(resource, _fhirpath_operations(parameters))


def _run_fhirpath_patch(resource: dict, operations: list[_Operation]) -> dict:
    root = copy.deepcopy(resource)
    for op in operations:
        _APPLY[op.type](root, op)
        _prune(root)  # what an operation emptied is gone before the next one looks
    return root


def _fhirpath_operations(parameters: dict) -> list[_Operation]:
    params = parameters.get("parameter", [])
    if not isinstance(params, list):
        raise bad_request("Parameters.parameter must be an array")
    return [_parse_operation(p, i) for i, p in enumerate(params)]


def _parse_operation(param: object, i: int) -> _Operation:
    where = f"FHIRPath Patch operation {i}"
    if not isinstance(param, dict) or param.get("name") != "operation":
        raise bad_request(f"{where}: every parameter of a FHIRPath Patch is named 'operation'")
    parts = param.get("part")
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise bad_request(f"{where}: the operation's parts are missing")
    found: dict[str, dict] = {}
    for part in parts:
        name = part.get("name")
        if not isinstance(name, str):
            raise bad_request(f"{where}: a part has no name")
        if name in found:
            raise bad_request(f"{where}: part {name!r} is repeated")
        found[name] = part
    type_ = _primitive_part(found, "type", where)
    if type_ not in _FHIRPATH_OPS:
        raise bad_request(f"{where}: type must be one of {', '.join(_FHIRPATH_OPS)} (got {type_!r})")
    where = f"{where} ({type_})"
    expected = _FHIRPATH_OPS[type_]
    for name in expected:
        if name not in found:
            raise bad_request(f"{where}: part {name!r} is missing")
    extra = sorted(set(found) - {"type", *expected})
    if extra:
        raise bad_request(f"{where}: unexpected part(s) {', '.join(map(repr, extra))} for a {type_}")
    path = _primitive_part(found, "path", where)
    if not isinstance(path, str) or not path.strip():
        raise bad_request(f"{where}: the path must be a FHIRPath expression")
    where = f"{where} at {path!r}"
    ast = _parse_fhirpath(path, where)
    name = _primitive_part(found, "name", where) if "name" in found else None
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(\[x\])?", name)):
        raise bad_request(f"{where}: name {name!r} is not an element name")
    return _Operation(
        index=i,
        type=type_,
        path=path,
        ast=ast,
        name=name,
        value=_part_value(found["value"], f"{where}, value") if "value" in found else None,
        at=_integer_part(found, "index", where),
        source=_integer_part(found, "source", where),
        destination=_integer_part(found, "destination", where),
    )


def _value_keys(part: dict) -> list[str]:
    return [k for k in part if k.startswith("value") and k[5:6].isupper()]


def _primitive_part(found: dict[str, dict], name: str, where: str) -> Any:
    keys = _value_keys(found[name])
    if len(keys) != 1:
        raise bad_request(f"{where}: part {name!r} needs exactly one value[x]")
    return found[name][keys[0]]


def _integer_part(found: dict[str, dict], name: str, where: str) -> int | None:
    if name not in found:
        return None
    keys = _value_keys(found[name])
    value = found[name].get(keys[0]) if len(keys) == 1 and keys[0] in _INTEGER_TYPES else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"{where}: part {name!r} needs a valueInteger")
    return value


def _part_value(part: dict, where: str) -> _Value:
    """A part's content: its value[x], its resource or its nested parts (an anonymous type)."""
    keys = _value_keys(part)
    given = len(keys) + ("resource" in part) + ("part" in part)
    if given != 1:
        raise bad_request(f"{where}: exactly one of value[x], resource or part is expected")
    if keys:
        key = keys[0]
        return _Value(key[5:], part[key], part.get("_" + key))
    if "resource" in part:
        if not isinstance(part["resource"], dict) or "resourceType" not in part["resource"]:
            raise bad_request(f"{where}: the resource is not a FHIR resource")
        return _Value(None, part["resource"])
    parts = part["part"]
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise bad_request(f"{where}: the parts must be a non-empty array of objects")
    for sub in parts:
        if not isinstance(sub.get("name"), str):
            raise bad_request(f"{where}: a part has no name")
        _part_value(sub, f"{where}.{sub['name']}")  # checked now: a malformed value is a 400, not a 422
    return _Value(None, parts=tuple(parts))


# FHIRPath, with fhirpathpy. Its own parse() ignores syntax errors (it walks whatever ANTLR recovered), so a
# patch path is parsed here with an error listener that raises, and must be consumed to the end.


@lru_cache(maxsize=1024)
def _parse_cached(expression: str) -> dict | str:
    from antlr4 import CommonTokenStream, InputStream, Token
    from antlr4.error.ErrorListener import ErrorListener
    from antlr4.tree.Tree import ParseTreeWalker
    from fhirpathpy.parser.ASTPathListener import ASTPathListener
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    class _Raise(ErrorListener):
        def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):
            raise SyntaxError(f"column {column + 1}: {msg}")

    try:
        expression = _quote_keyword_names(expression, FHIRPathLexer, InputStream, _Raise())
        lexer = FHIRPathLexer(InputStream(expression))
        lexer.removeErrorListeners()
        lexer.addErrorListener(_Raise())
        tokens = CommonTokenStream(lexer)
        parser = FHIRPathParser(tokens)
        parser.removeErrorListeners()
        parser.addErrorListener(_Raise())
        tree = parser.expression()
        if tokens.LA(1) != Token.EOF:
            raise SyntaxError(f"unexpected {tokens.LT(1).text!r} after the expression")
        listener = ASTPathListener()
        ParseTreeWalker().walk(listener, tree)
        return listener.parentStack[0]
    except Exception as exc:  # ANTLR raises several kinds; all mean the same here
        return str(exc) or type(exc).__name__


def _quote_keyword_names(expression: str, lexer_class: Any, input_stream: Any, listener: Any) -> str:
    """``Patient.text.div`` → ``Patient.text.`div```: an element named like a FHIRPath keyword (Narrative.div)
    is not an identifier in the grammar, yet after a ``.`` and not before ``(`` it can only be an element name
    (as the HL7 engines read it)."""
    lexer = lexer_class(input_stream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    tokens = [t for t in lexer.getAllTokens() if t.channel == 0]  # not whitespace and comments
    out: list[str] = []
    end = 0
    for i, token in enumerate(tokens):
        if (
            i
            and tokens[i - 1].text == "."
            and token.text.isalpha()
            and token.type != lexer_class.IDENTIFIER
            and token.text not in ("as", "contains", "in", "is")  # identifiers in the grammar already
            and (i + 1 == len(tokens) or tokens[i + 1].text != "(")
        ):
            out.append(expression[end : token.start] + f"`{token.text}`")
            end = token.stop + 1
    return "".join(out) + expression[end:]


def _parse_fhirpath(expression: str, where: str) -> dict:
    ast = _parse_cached(expression)
    if isinstance(ast, str):
        raise bad_request(f"{where}: the path is not a valid FHIRPath expression ({ast})")
    return ast


@cache
def _model() -> dict:
    from fhirpathpy.models import models

    return models["r4"]


@cache
def _choice_suffixes() -> frozenset[str]:
    return frozenset(t for types in _model()["choiceTypePaths"].values() for t in types)


@dataclass(frozen=True)
class _Loc:
    """Where a FHIRPath result lives: ``parent[key]`` or ``parent[key][index]`` (the resource: no parent)."""

    parent: dict | None
    key: str = ""
    index: int | None = None
    steps: tuple[tuple[str, int | None], ...] = ()  # (key, index) from the resource down to here
    name: str = ""  # the FHIRPath name: "deceased" for the key "deceasedBoolean"

    def value(self, root: dict) -> Any:
        if self.parent is None:
            return root
        value = self.parent.get(self.key)
        if self.index is None:
            return value
        return value[self.index] if isinstance(value, list) and self.index < len(value) else None

    def ext(self) -> Any:
        if self.parent is None:
            return None
        ext = self.parent.get("_" + self.key)
        if self.index is None:
            return ext
        return ext[self.index] if isinstance(ext, list) and self.index < len(ext) else None


def _evaluate(root: dict, op: _Operation, ast: dict | None = None) -> list[_Loc]:
    """The distinct elements of ``root`` the path (or ``ast``) selects, in order."""
    import fhirpathpy
    from fhirpathpy.engine.nodes import ResourceNode

    try:
        nodes = fhirpathpy.apply_parsed_path(
            root, ast or op.ast, {"resource": root, "rootResource": root}, _model(), {"returnRawData": True}
        )
    except Exception as exc:  # fhirpathpy raises plain Exceptions for type and arity errors
        raise op.fail(f"the path cannot be evaluated: {exc}") from None
    locs: list[_Loc] = []
    seen: set[tuple[int, str, int | None]] = set()
    for node in nodes:
        loc = _locate(root, node) if isinstance(node, ResourceNode) else None
        if loc is None:
            raise op.fail(f"the path selects {_describe(node)}, which is not an element of the resource")
        ident = (id(loc.parent), loc.key, loc.index)
        if ident not in seen:  # fhirpathpy yields a primitive and its _x companion separately
            seen.add(ident)
            locs.append(loc)
    return locs


def _describe(node: Any) -> str:
    data = getattr(node, "data", node)
    return f"{data!r}"[:80]


_SEGMENT = re.compile(r"([A-Za-z][A-Za-z0-9]*)(?:\[(\d+)\])?")


def _locate(root: dict, node: Any) -> _Loc | None:
    """The location of a fhirpathpy result, from the path it records (``Patient.contact[0].name``),
    checked against the node's data (a node built by a function, not navigation, is refused)."""
    data = node.data
    if node.propName is None:
        return _Loc(None, name=root.get("resourceType", "")) if data is root else None
    segments = node.propName.split(".")[1:]
    current: Any = root
    loc: _Loc | None = None
    steps: list[tuple[str, int | None]] = []
    for segment in segments:
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            return None
        if not isinstance(current, dict):  # below a primitive: into its _x companion (id, extension)
            if loc is None or not isinstance(loc.ext(), dict):
                return None
            current = loc.ext()
            steps[-1] = ("_" + steps[-1][0], steps[-1][1])
        name, index = match.group(1), (int(match.group(2)) if match.group(2) is not None else None)
        key = _resolve_key(current, name)
        if key is None:
            return None
        steps.append((key, index))
        loc = _Loc(current, key, index, tuple(steps), name)
        current = loc.value(root)
    if loc is None:
        return None
    value, ext = loc.value(root), loc.ext()
    if isinstance(data, dict | list):
        return loc if data is value or data is ext else None
    return loc if json_equal(data, value) or json_equal(data, ext) else None


def _resolve_key(obj: dict, name: str) -> str | None:
    """The JSON property of FHIRPath name ``name`` in ``obj``: itself, or its choice (``deceasedBoolean``)."""
    if name in obj or "_" + name in obj:
        return name
    suffixes = _choice_suffixes()
    for key in obj:
        bare = key.removeprefix("_")
        if bare.startswith(name) and bare[len(name) :] in suffixes:
            return bare
    return None


# What the R4 definitions say of an element's children: which are arrays, and their types. The R4B models
# cover the types validated with them, the R4 structures the others (see fhir_server/validation).

_RESOURCE = "resource"  # the type of Resource-typed children (contained...): the data's resourceType decides


def _resource_ctx(resource_type: object) -> Any:
    from ..validation import R4_RESOURCE_TYPES
    from ..validation.r4 import structural_types

    if not isinstance(resource_type, str) or resource_type not in R4_RESOURCE_TYPES:
        return None
    if resource_type in structural_types():
        return ("r4", resource_type)
    from ..validation.r4b import model_class

    return ("r4b", model_class(resource_type))


@cache
def _r4b_fields(model: Any) -> dict[str, tuple[bool, Any]]:
    from ..validation.r4b import ELEM, PEXT, RES, raw_specs

    fields = {}
    for key, field in raw_specs(model).items():
        if field.kind == RES:
            child: Any = _RESOURCE
        elif field.kind in (ELEM, PEXT) and field.model is not None:
            child = ("r4b", field.model)
        else:
            child = None
        fields[key] = (field.is_list, child)
    return fields


def _fields(ctx: Any) -> dict[str, tuple[bool, Any]] | None:
    if ctx is None or ctx == _RESOURCE:
        return None
    kind, type_ = ctx
    if kind == "r4b":
        return _r4b_fields(type_)
    return _r4_fields(type_)


@cache
def _r4_fields(type_name: str) -> dict[str, tuple[bool, Any]] | None:
    from ..validation.r4 import _structures

    nodes = _structures()[0]
    node = nodes.get(type_name)
    if node is None:
        return None
    fields: dict[str, tuple[bool, Any]] = {}
    for key, elem in node.elements.items():
        child: Any = ("r4", elem.type) if elem.type in nodes else (_RESOURCE if elem.type == "Resource" else None)
        fields[key] = (elem.is_list, child)
        if elem.primitive is not None:
            fields["_" + key] = (elem.is_list, ("r4", "Element") if "Element" in nodes else None)
    return fields


def _ctx_at(root: dict, steps: tuple[tuple[str, int | None], ...]) -> Any:
    """The type of the element at ``steps`` (None when unknown)."""
    ctx = _resource_ctx(root.get("resourceType"))
    current: Any = root
    for key, index in steps:
        fields = _fields(ctx)
        child = fields.get(key, (None, None))[1] if fields else None
        current = current.get(key) if isinstance(current, dict) else None
        if index is not None:
            current = current[index] if isinstance(current, list) and index < len(current) else None
        if isinstance(current, dict) and "resourceType" in current:
            ctx = _resource_ctx(current["resourceType"])
        else:
            ctx = child
    return ctx


def _child(ctx: Any, name: str, value: _Value | None, op: _Operation) -> tuple[str, bool | None, Any]:
    """The JSON key for child ``name`` of an element of type ``ctx`` given ``value``, whether it is an
    array, and its type. Choice elements take the value's type: ``deceased`` + Boolean → deceasedBoolean."""
    name = name.removesuffix("[x]")
    fields = _fields(ctx)
    if fields is None:
        return name, None, None
    key = name
    if key not in fields and value is not None and value.type is not None and name + value.type in fields:
        key = name + value.type
    if key not in fields:
        choices = sorted(k for k in fields if k.startswith(name) and k[len(name) :] in _choice_suffixes())
        if choices:
            raise op.fail(f"{name!r} is a choice ({', '.join(choices)}): its value must be one of these types")
        raise op.fail(f"there is no element {name!r} here")
    is_list, child = fields[key]
    if value is not None and value.type is None and value.parts == () and child != _RESOURCE:
        raise op.fail(f"{key!r} is not a resource: its value cannot be given as a resource")
    return key, is_list, child


def _choice_base(key: str, fields: dict | None) -> str:
    """``valueString`` → ``value`` when it is a variant of the choice element value[x], else ``key``."""
    suffixes = _choice_suffixes()
    for suffix in suffixes:
        base = key.removesuffix(suffix)
        if base and base != key and fields:
            variants = [k for k in fields if k.startswith(base) and k[len(base) :] in suffixes]
            if len(variants) > 1:
                return base
    return key


def _materialize(value: _Value, ctx: Any, op: _Operation) -> tuple[Any, Any]:
    """The JSON of a value for an element of type ``ctx``: (value, ``_x`` companion)."""
    if not value.parts:
        return copy.deepcopy(value.data), copy.deepcopy(value.ext)
    if ctx == _RESOURCE:
        raise op.fail("a resource cannot be given as parts")
    obj: dict[str, Any] = {}
    for part in value.parts:
        sub = _part_value(part, "value")
        key, is_list, child = _child(ctx, part["name"], sub, op)
        data, ext = _materialize(sub, child, op)
        if is_list or (is_list is None and key in obj):
            if is_list is None and not isinstance(obj[key], list):  # unknown type: a repeat makes an array
                obj[key] = [obj[key]]
                if "_" + key in obj:
                    obj["_" + key] = [obj["_" + key]]
            _insert(obj, key, len(obj.get(key, ())), data, ext)
        elif key in obj:
            raise op.fail(f"part {key!r} is repeated but {key!r} is not an array")
        else:
            _assign(obj, key, None, data, ext)
    return obj, None


def _assign(parent: dict, key: str, index: int | None, value: Any, ext: Any) -> None:
    if index is None:
        parent[key] = value
        if ext is None:
            parent.pop("_" + key, None)
        else:
            parent["_" + key] = ext
        return
    parent[key][index] = value
    companion = parent.get("_" + key)
    if companion is None and ext is not None:
        companion = parent["_" + key] = [None] * len(parent[key])
    if companion is not None:
        companion[index] = ext


def _insert(parent: dict, key: str, index: int, value: Any, ext: Any) -> None:
    values = parent.setdefault(key, [])
    companion = parent.get("_" + key)
    values.insert(index, value)
    if isinstance(companion, list):
        companion.insert(index, ext)
    elif ext is not None:
        companion = parent["_" + key] = [None] * len(values)
        companion[index] = ext


def _remove(loc: _Loc) -> None:
    parent = loc.parent
    assert parent is not None
    if loc.index is None:
        parent.pop(loc.key, None)
        parent.pop("_" + loc.key, None)
        return
    for key in (loc.key, "_" + loc.key):
        values = parent.get(key)
        if isinstance(values, list) and loc.index < len(values):
            del values[loc.index]
    # emptied arrays are pruned after the operation


def _single(root: dict, op: _Operation) -> _Loc:
    locs = _evaluate(root, op)
    if not locs:
        raise op.fail(f"no content found at {op.path} when {'adding' if op.type == 'add' else 'replacing'}")
    if len(locs) > 1:
        raise op.fail(f"the path selects {len(locs)} elements, it must select exactly one")
    return locs[0]


def _element_ctx(root: dict, loc: _Loc) -> Any:
    """The type of the element at ``loc`` as its parent declares it (a resource there: _RESOURCE)."""
    fields = _fields(_ctx_at(root, loc.steps[:-1]))
    return fields.get(loc.key, (None, None))[1] if fields else None


def _collection(root: dict, op: _Operation) -> tuple[dict, str, Any]:
    """The array a path designates (insert, move): (its parent, its key, its items' type). An empty
    array (absent in FHIR JSON) is found through the path's parent: ``Patient.identifier`` → Patient."""
    locs = _evaluate(root, op)
    if locs:
        first = locs[0]
        if any(loc.index is None for loc in locs):
            raise op.fail("the path does not select the items of an array")
        if any(loc.parent is not first.parent or loc.key != first.key for loc in locs):
            raise op.fail("the path selects items of more than one array")
        assert first.parent is not None
        return first.parent, first.key, _element_ctx(root, first)
    top = op.ast["children"][0]
    children = top.get("children") or []
    if top.get("type") != "InvocationExpression" or len(children) != 2 or children[1]["type"] != "MemberInvocation":
        raise op.fail("the path selects nothing, and does not end with an element name")
    name = children[1]["children"][0]["text"].strip("`")
    parents = _evaluate(root, op, {"children": [children[0]]})
    if len(parents) != 1 or not isinstance(parents[0].value(root), dict):
        raise op.fail(f"the path selects nothing, and its parent selects {len(parents)} elements, not one")
    parent_loc = parents[0]
    ctx = _ctx_at(root, parent_loc.steps)
    key, is_list, child = _child(ctx, name, None, op)
    if is_list is False:
        raise op.fail(f"{key!r} is not an array")
    return parent_loc.value(root), key, child


def _op_add(root: dict, op: _Operation) -> None:
    assert op.name is not None and op.value is not None
    loc = _single(root, op)
    target = loc.value(root)
    ctx = _ctx_at(root, loc.steps)
    if not isinstance(target, dict):
        if loc.parent is None or op.name not in ("id", "extension"):
            raise op.fail("the path selects a primitive value: only 'id' or 'extension' can be added to it")
        # id and extensions of a primitive live in its _x companion
        from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension

        ctx = ("r4b", FHIRPrimitiveExtension)
        if loc.ext() is None:
            _assign(loc.parent, loc.key, loc.index, target, {})
        target = loc.ext()
    key, is_list, child = _child(ctx, op.name, op.value, op)
    data, ext = _materialize(op.value, child, op)
    if is_list is None:
        is_list = isinstance(target.get(key), list)
    if is_list:
        _insert(target, key, len(target.get(key, ())), data, ext)
    elif (present := _resolve_key(target, _choice_base(key, _fields(ctx)))) is not None:
        raise op.fail(f"{present!r} already has a value: use replace to change it")
    else:
        _assign(target, key, None, data, ext)


def _op_insert(root: dict, op: _Operation) -> None:
    assert op.value is not None and op.at is not None
    parent, key, ctx = _collection(root, op)
    size = len(parent.get(key, ()))
    if not 0 <= op.at <= size:
        raise op.fail(f"index {op.at} is out of range: the list has {size} items (0 to {size} allowed)")
    data, ext = _materialize(op.value, ctx, op)
    _insert(parent, key, op.at, data, ext)


def _op_delete(root: dict, op: _Operation) -> None:
    locs = _evaluate(root, op)
    if not locs:
        return  # "delete ... (if found)"
    if len(locs) > 1:
        raise op.fail(f"the path selects {len(locs)} elements: only a single element can be deleted")
    if locs[0].parent is None:
        raise op.fail("the resource itself cannot be deleted by a patch")
    _remove(locs[0])


def _op_replace(root: dict, op: _Operation) -> None:
    assert op.value is not None
    loc = _single(root, op)
    if loc.parent is None:
        raise op.fail("the resource itself cannot be replaced by a patch: use update")
    data, ext = _materialize(op.value, _element_ctx(root, loc), op)
    key = loc.key
    if loc.index is None and key != loc.name and op.value.type is not None:  # a choice takes the new type
        key = loc.name + op.value.type
        if key != loc.key:
            _child(_ctx_at(root, loc.steps[:-1]), key, op.value, op)  # a type this choice allows
            _remove(loc)
    _assign(loc.parent, key, loc.index, data, ext)


def _op_move(root: dict, op: _Operation) -> None:
    assert op.source is not None and op.destination is not None
    parent, key, _ = _collection(root, op)
    size = len(parent.get(key, ()))
    for what, index in (("source", op.source), ("destination", op.destination)):
        if not 0 <= index < size:
            raise op.fail(f"{what} {index} is out of range: the list has {size} items")
    for name in (key, "_" + key):
        values = parent.get(name)
        if isinstance(values, list) and len(values) == size:
            values.insert(op.destination, values.pop(op.source))


_APPLY: dict[str, Callable[[dict, _Operation], None]] = {
    "add": _op_add,
    "insert": _op_insert,
    "delete": _op_delete,
    "replace": _op_replace,
    "move": _op_move,
}

"""An OpenAPI 3.0 description of the FHIR REST API, generated from the CapabilityStatement, and a page to browse it.

``GET /openapi.json`` is built from the very CapabilityStatement that ``GET /metadata`` serves (resource
types, their interactions, search parameters, includes and operations; the system interactions, search
parameters and operations; the SMART endpoints when authorization is on), so the two never drift. Only what
the statement cannot say is added here: the paths and parameters of each interaction (http.html), the
compartment searches, the Bulk Data status and file endpoints. Built once per process (it is large), the
base URL of each request put in.

``GET /docs`` is Swagger UI with its assets served by this server from the ``swagger-ui-bundle`` package: no
CDN, and a Content-Security-Policy that allows nothing else. Both are public (they describe the API and never
carry data), like ``/metadata``: see ``security.authenticate.PUBLIC_PATHS``.
"""

from __future__ import annotations

import gzip
import html
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import not_found
from ..fhirjson import dumps
from ..interactions.capabilities import capability_statement
from ..search.compartments import definitions as compartment_definitions
from .responses import base_url

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
OPENAPI_VERSION = "3.0.3"  # what the bundled Swagger UI (4.x) renders; schemathesis and validators read it too

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
FORM = "application/x-www-form-urlencoded"
ID_PATTERN = r"^[A-Za-z0-9\-\.]{1,64}$"

# --- components shared by every type -----------------------------------------------------------------------

_SEARCH_TYPES = {
    "number": "a number, with an optional prefix eq ne gt lt ge le sa eb ap (`ge5.4`)",
    "date": "a date, dateTime or instant, with an optional prefix eq ne gt lt ge le sa eb ap (`ge2024-01-01`)",
    "string": "text matched at the start, case and accents ignored; `:exact`, `:contains`",
    "token": "`[system]|[code]`, `[code]` or `[system]|`; `:not`, `:text`, `:in`, `:not-in`, `:of-type`…",
    "reference": "`[type]/[id]`, `[id]` or an absolute URL; `:[type]`, chains `param.param=…`, `:identifier`",
    "composite": "`value$value` combinations",
    "quantity": "`[prefix][number]|[system]|[code]`",
    "uri": "a URI; `:below`, `:above`",
    "special": "see the definition",
}

_ERROR = {"$ref": "#/components/responses/Error"}


def _schemas() -> dict[str, Any]:
    outcome_issue = {
        "type": "object",
        "required": ["severity", "code"],
        "properties": {
            "severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
            "code": {"type": "string"},
            "diagnostics": {"type": "string"},
            "expression": {"type": "array", "items": {"type": "string"}},
        },
    }
    return {
        "id": {"type": "string", "pattern": ID_PATTERN, "description": "A FHIR id (datatypes.html#id)"},
        "Resource": {
            "type": "object",
            "description": "Any FHIR R4 resource in JSON (json.html)",
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string"}, "id": {"$ref": "#/components/schemas/id"}},
        },
        "OperationOutcome": {
            "type": "object",
            "description": "What went wrong: every error of this server is one (operationoutcome.html)",
            "required": ["resourceType", "issue"],
            "properties": {
                "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                "issue": {"type": "array", "minItems": 1, "items": outcome_issue},
            },
        },
        "Bundle": {
            "type": "object",
            "description": "A Bundle (bundle.html): searchset and history answers; batch and transaction requests",
            "required": ["resourceType", "type"],
            "properties": {
                "resourceType": {"type": "string", "enum": ["Bundle"]},
                "type": {
                    "type": "string",
                    "enum": [
                        "document",
                        "message",
                        "transaction",
                        "transaction-response",
                        "batch",
                        "batch-response",
                        "history",
                        "searchset",
                        "collection",
                    ],
                },
                "total": {"type": "integer", "minimum": 0},
                "link": {"type": "array", "items": {"type": "object"}},
                "entry": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "fullUrl": {"type": "string"},
                            "resource": {"$ref": "#/components/schemas/Resource"},
                            "request": {
                                "type": "object",
                                "required": ["method", "url"],
                                "properties": {
                                    "method": {
                                        "type": "string",
                                        "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                                    },
                                    "url": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
        "Parameters": {
            "type": "object",
            "description": "Operation parameters (parameters.html); also a FHIRPath Patch body",
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"type": "string", "enum": ["Parameters"]},
                "parameter": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
                },
            },
        },
        "JsonPatch": {
            "type": "array",
            "description": "A JSON Patch document (RFC 6902)",
            "items": {
                "type": "object",
                "required": ["op", "path"],
                "properties": {
                    "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
                    "path": {"type": "string"},
                    "from": {"type": "string"},
                    "value": {},
                },
            },
        },
        "ExportManifest": {
            "type": "object",
            "description": "The Bulk Data complete-status manifest",
            "required": ["transactionTime", "request", "requiresAccessToken", "output", "error"],
            "properties": {
                "transactionTime": {"type": "string"},
                "request": {"type": "string"},
                "requiresAccessToken": {"type": "boolean"},
                "output": {"type": "array", "items": {"type": "object"}},
                "error": {"type": "array", "items": {"type": "object"}},
            },
        },
    }


def _query(name: str, schema: dict, description: str, **extra: Any) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


def _header(name: str, description: str, **schema: Any) -> dict:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string", **schema},
        "description": description,
    }


def _common_parameters() -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "_format": _query(
            "_format",
            {"type": "string", "enum": ["json", FHIR_JSON, "application/json"]},
            "Response format (wins over Accept); XML is not supported (406)",
        ),
        "_pretty": _query("_pretty", {"type": "boolean"}, "Indent the JSON response"),
        "_count": _query(
            "_count",
            {"type": "integer", "minimum": 0},
            "Page size (default and maximum: the server's settings); 0 answers the total only",
        ),
        "_sort": _query("_sort", text, "Comma-separated search parameters, `-` for descending (`-date,_id`)"),
        "_summary": _query(
            "_summary",
            {"type": "string", "enum": ["true", "text", "data", "count", "false"]},
            "Return a summary of each resource, or only the count",
        ),
        "_elements": _query("_elements", text, "Comma-separated top-level elements to return"),
        "_total": _query(
            "_total", {"type": "string", "enum": ["none", "estimate", "accurate"]}, "Whether Bundle.total is computed"
        ),
        "_since": _query("_since", {"type": "string", "format": "date-time"}, "Only versions changed after"),
        "_at": _query("_at", text, "Versions current at that time (a date with an optional prefix)"),
        "_type": _query("_type", text, "Comma-separated resource types"),
        "If-Match": _header("If-Match", 'Optimistic locking: the version the change applies to (`W/"3"`)'),
        "If-None-Match": _header("If-None-Match", 'Conditional read: 304 when the version is this one (`W/"3"`)'),
        "If-Modified-Since": _header("If-Modified-Since", "Conditional read: 304 unless changed since (HTTP date)"),
        "If-None-Exist": _header("If-None-Exist", "Conditional create: search criteria (`identifier=sys|value`)"),
        "Prefer": _header("Prefer", "`return=minimal|representation|OperationOutcome`, `handling=strict|lenient`"),
        "Prefer-async": {
            **_header("Prefer", "Bulk Data kick-off: must be `respond-async`", enum=["respond-async"]),
            "required": True,
        },
    }


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/parameters/{name}"}


def _path_parameter(name: str, schema: dict, description: str, **extra: Any) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description, **extra}


def _path_id(name: str = "id", description: str = "The logical id of the resource", example: str = "example") -> dict:
    """An id in the path; the example is the id of most official R4 examples (a version id: ``1``)."""
    return _path_parameter(name, {"$ref": "#/components/schemas/id"}, description, example=example)


def _json_content(schema: dict) -> dict:
    return {FHIR_JSON: {"schema": schema}, "application/json": {"schema": schema}}


def _schema_ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(name: str) -> dict:
    return {"$ref": f"#/components/responses/{name}"}


def _ok(name: str, **more: str) -> dict:
    """200 with the response component ``name``, other statuses (``s304="NotModified"``), errors."""
    return {"200": _response(name), **{k.removeprefix("s"): _response(v) for k, v in more.items()}, "4XX": _ERROR}


def _responses(types: list[str]) -> dict[str, Any]:
    outcome = _json_content(_schema_ref("OperationOutcome"))
    found: dict[str, Any] = {
        "Error": {"description": "The error, as an OperationOutcome", "content": outcome},
        "OperationOutcome": {
            "description": "An OperationOutcome (the verdict of $validate, an acknowledgement)",
            "content": outcome,
        },
        "Bundle": {
            "description": "A Bundle: searchset, history, batch-response or transaction-response",
            "content": _json_content(_schema_ref("Bundle")),
        },
        "Parameters": {"description": "A Parameters resource", "content": _json_content(_schema_ref("Parameters"))},
        "Resource": {"description": "A resource", "content": _json_content(_schema_ref("Resource"))},
        "NotModified": {"description": "Not modified (If-None-Match / If-Modified-Since)"},
        "Deleted": {"description": "Deleted (also when already deleted or unknown)"},
    }
    for t in types:
        found[t] = {"description": f"The {t} (ETag, Last-Modified)", "content": _json_content(_schema_ref(t))}
        found[f"{t}.created"] = {
            "description": f"The {t}, created: Location, ETag, Last-Modified",
            "content": _json_content(_schema_ref(t)),
        }
    return found


_TRANSACTION_EXAMPLE = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:0b6a5a3e-8a4c-4a2e-9d1e-3f1c2b7a9e10",
            "resource": {"resourceType": "Patient", "name": [{"family": "Exemple", "given": ["Zoé"]}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                "subject": {"reference": "urn:uuid:0b6a5a3e-8a4c-4a2e-9d1e-3f1c2b7a9e10"},
                "valueQuantity": {"value": 61.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
    ],
}
_META_EXAMPLE = {
    "resourceType": "Parameters",
    "parameter": [{"name": "meta", "valueMeta": {"tag": [{"system": "http://example.org/tags", "code": "reviewed"}]}}],
}


def _request_bodies(types: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {
        "Bundle": _body(_schema_ref("Bundle"), "A Bundle of type batch or transaction", example=_TRANSACTION_EXAMPLE),
        "Parameters": _body(_schema_ref("Parameters"), "A Parameters resource"),
        "Meta": _body(_schema_ref("Parameters"), "A Parameters resource with one `meta`", example=_META_EXAMPLE),
        "Resource": _body(_schema_ref("Resource"), "A resource, or a Parameters resource (resource, mode, profile)"),
        "Patch": {
            "required": True,
            "description": "JSON Patch, or FHIRPath Patch (a Parameters resource)",
            "content": {
                JSON_PATCH: {
                    "schema": _schema_ref("JsonPatch"),
                    "example": [{"op": "add", "path": "/language", "value": "fr-FR"}],
                },
                FHIR_JSON: {"schema": _schema_ref("Parameters")},
            },
        },
    }
    for t in types:
        found[t] = _body(
            _schema_ref(t),
            f"A {t} (on update, its id is the id of the URL; on create, ignored)",
            example={"resourceType": t, "id": "example"},
        )
    return found


def _request(name: str) -> dict:
    return {"$ref": f"#/components/requestBodies/{name}"}


def _operation(op_id: str, tag: str, summary: str, parameters: list, responses: dict, **extra: Any) -> dict:
    operation = {
        "operationId": op_id,
        "tags": [tag],
        "summary": summary,
        "parameters": parameters,
        "responses": responses,
        **extra,
    }
    if not parameters:
        del operation["parameters"]
    return operation


def _body(schema: dict, description: str, example: Any = None) -> dict:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"required": True, "description": description, "content": {FHIR_JSON: content, "application/json": content}}


# --- per resource type -----------------------------------------------------------------------------------


def _search_parameter(param: dict) -> dict:
    """A search parameter of the statement as a query parameter: its FHIR type and definition described."""
    kind = param.get("type", "special")
    text = f"**{kind}** search parameter"
    if param.get("definition"):
        text += f" ([definition]({param['definition']}))"
    if param.get("documentation"):
        text += f": {param['documentation']}"
    return _query(param["name"], {"type": "string"}, text, **{"x-fhir-search-type": kind})


def _written(type_: str) -> dict:
    return {"200": _response(type_), "201": _response(f"{type_}.created"), "4XX": _ERROR}


_COMMON = [_ref("_format"), _ref("_pretty")]
_RESULTS = [_ref(n) for n in ("_count", "_sort", "_summary", "_elements", "_total")]
_HISTORY = [_ref("_count"), _ref("_since"), _ref("_at")]
_VID = _path_id("vid", "The version id", "1")


def _resource_paths(entry: dict, system_params: list[dict], parameters: dict[str, Any]) -> dict[str, dict]:
    """The paths of one ``CapabilityStatement.rest.resource``; registers its search parameters in ``parameters``."""
    t = entry["type"]
    interactions = {i["code"] for i in entry.get("interaction", ())}
    search_refs = []
    for param in [*entry.get("searchParam", ()), *(p for p in system_params if p["name"] in ("_list", "_filter"))]:
        key = f"{t}.{param['name']}"
        parameters[key] = _search_parameter(param)
        search_refs.append(_ref(key))
    results = list(_RESULTS)
    if entry.get("searchInclude"):
        parameters[f"{t}._include"] = _query(
            "_include",
            {"type": "array", "items": {"type": "string", "enum": entry["searchInclude"]}},
            "Also return what these references point at",
            style="form",
            explode=True,
        )
        results.append(_ref(f"{t}._include"))
    if entry.get("searchRevInclude"):
        parameters[f"{t}._revinclude"] = _query(
            "_revinclude",
            {"type": "array", "items": {"type": "string", "enum": entry["searchRevInclude"]}},
            "Also return the resources pointing at the matches",
            style="form",
            explode=True,
        )
        results.append(_ref(f"{t}._revinclude"))
    paths: dict[str, dict] = {}

    def add(path: str, method: str, operation: dict) -> None:
        paths.setdefault(path, {})[method] = operation

    if "read" in interactions:
        add(
            f"/{t}/{{id}}",
            "get",
            _operation(
                f"read-{t}",
                t,
                f"read: the current {t}",
                [_path_id(), _ref("If-None-Match"), _ref("If-Modified-Since")],
                _ok(t, s304="NotModified"),
                description="404 when unknown, 410 when deleted.",
            ),
        )
    if "vread" in interactions:
        add(
            f"/{t}/{{id}}/_history/{{vid}}",
            "get",
            _operation(f"vread-{t}", t, f"vread: one version of a {t}", [_path_id(), _VID], _ok(t)),
        )
    if "update" in interactions:
        add(
            f"/{t}/{{id}}",
            "put",
            _operation(
                f"update-{t}",
                t,
                f"update: replace a {t} (creates it when the id is new)",
                [_path_id(), _ref("If-Match"), _ref("Prefer")],
                _written(t),
                requestBody=_request(t),
            ),
        )
        if entry.get("conditionalUpdate"):
            add(
                f"/{t}",
                "put",
                _operation(
                    f"conditional-update-{t}",
                    t,
                    f"conditional update: the {t} matching the criteria",
                    [*search_refs, _ref("Prefer")],
                    _written(t),
                    requestBody=_request(t),
                    description="No match: created; one: updated; several: 412.",
                ),
            )
    if "patch" in interactions:
        add(
            f"/{t}/{{id}}",
            "patch",
            _operation(
                f"patch-{t}",
                t,
                f"patch: change part of a {t}",
                [_path_id(), _ref("If-Match"), _ref("Prefer")],
                _ok(t),
                requestBody=_request("Patch"),
            ),
        )
        add(
            f"/{t}",
            "patch",
            _operation(
                f"conditional-patch-{t}",
                t,
                f"conditional patch: the one {t} matching the criteria",
                [*search_refs, _ref("If-Match"), _ref("Prefer")],
                _ok(t),
                requestBody=_request("Patch"),
            ),
        )
    if "delete" in interactions:
        deleted = {"204": _response("Deleted"), "4XX": _ERROR}
        add(
            f"/{t}/{{id}}",
            "delete",
            _operation(f"delete-{t}", t, f"delete: a {t}", [_path_id(), _ref("If-Match")], deleted),
        )
        if entry.get("conditionalDelete") in ("single", "multiple"):
            add(
                f"/{t}",
                "delete",
                _operation(
                    f"conditional-delete-{t}",
                    t,
                    f"conditional delete: every {t} matching the criteria",
                    [*search_refs],
                    deleted,
                ),
            )
    if "history-instance" in interactions:
        add(
            f"/{t}/{{id}}/_history",
            "get",
            _operation(
                f"history-instance-{t}", t, f"history: the versions of a {t}", [_path_id(), *_HISTORY], _ok("Bundle")
            ),
        )
    if "history-type" in interactions:
        add(
            f"/{t}/_history",
            "get",
            _operation(f"history-type-{t}", t, f"history: every version of every {t}", [*_HISTORY], _ok("Bundle")),
        )
    if "create" in interactions:
        headers = [_ref("If-None-Exist")] if entry.get("conditionalCreate") else []
        add(
            f"/{t}",
            "post",
            _operation(
                f"create-{t}",
                t,
                f"create: a new {t} (server-assigned id)",
                [*headers, _ref("Prefer")],
                _written(t),
                requestBody=_request(t),
            ),
        )
    if "search-type" in interactions:
        add(
            f"/{t}",
            "get",
            _operation(
                f"search-type-{t}",
                t,
                f"search: {t} resources matching the criteria",
                [*search_refs, *results],
                _ok("Bundle"),
                description="Every parameter also takes its modifiers (`name:exact=…`), chains and `_has`; "
                "an unknown parameter is refused (400) unless `Prefer: handling=lenient`.",
            ),
        )
        form = {"type": "object", "properties": {p["name"]: {"type": "string"} for p in entry.get("searchParam", ())}}
        add(
            f"/{t}/_search",
            "post",
            _operation(
                f"search-type-post-{t}",
                t,
                f"search: {t} resources, parameters in a form body",
                [*results],
                _ok("Bundle"),
                requestBody={"required": True, "content": {FORM: {"schema": form}}},
            ),
        )
    for op in entry.get("operation", ()):
        for path, method, operation in _resource_operation(t, op):
            add(path, method, operation)
    return paths


def _resource_operation(t: str, op: dict) -> list[tuple[str, str, dict]]:
    name = op["name"]
    about = {"externalDocs": {"url": op["definition"]}} if op.get("definition") else {}
    if name == "validate":
        mode = _query("mode", {"type": "string", "enum": ["create", "update", "delete"]}, "What to validate for")
        verdict = _ok("OperationOutcome")  # 200 whatever the verdict
        return [
            (
                f"/{t}/$validate",
                "post",
                _operation(
                    f"validate-type-{t}",
                    t,
                    f"$validate: check a {t}",
                    [mode],
                    verdict,
                    requestBody=_request("Resource"),
                    **about,
                ),
            ),
            (
                f"/{t}/{{id}}/$validate",
                "post",
                _operation(
                    f"validate-instance-{t}",
                    t,
                    f"$validate: check an update or delete of a {t}",
                    [_path_id(), mode],
                    verdict,
                    requestBody=_request("Resource"),
                    **about,
                ),
            ),
        ]
    if name == "meta":
        return [
            (
                f"/{t}/{{id}}/$meta",
                "get",
                _operation(
                    f"meta-{t}", t, f"$meta: profiles, tags, labels of a {t}", [_path_id()], _ok("Parameters"), **about
                ),
            ),
            (
                f"/{t}/{{id}}/_history/{{vid}}/$meta",
                "get",
                _operation(
                    f"meta-version-{t}",
                    t,
                    f"$meta: of one version of a {t}",
                    [_path_id(), _VID],
                    _ok("Parameters"),
                    **about,
                ),
            ),
        ]
    if name in ("meta-add", "meta-delete"):
        verb = "add" if name == "meta-add" else "remove"
        return [
            (
                f"/{t}/{{id}}/${name}",
                "post",
                _operation(
                    f"{name}-{t}",
                    t,
                    f"${name}: {verb} profiles, tags, labels (no new version)",
                    [_path_id()],
                    _ok("Parameters"),
                    requestBody=_request("Meta"),
                    **about,
                ),
            ),
            (
                f"/{t}/{{id}}/_history/{{vid}}/${name}",
                "post",
                _operation(
                    f"{name}-version-{t}",
                    t,
                    f"${name}: on one version of a {t}",
                    [_path_id(), _VID],
                    _ok("Parameters"),
                    requestBody=_request("Meta"),
                    **about,
                ),
            ),
        ]
    if name == "everything" and t == "Patient":
        return [
            (
                f"/{t}/{{id}}/$everything",
                "get",
                _operation(
                    "everything-Patient",
                    t,
                    "$everything: the patient's record",
                    [_path_id(), _ref("_since"), _ref("_type"), _ref("_count")],
                    _ok("Bundle"),
                    **about,
                ),
            )
        ]
    if (t, name) == ("Observation", "lastn"):
        params = [_query("max", {"type": "integer", "minimum": 1, "maximum": 100}, "How many per code (default 1)"),
                  *(_query(p, {"type": "string"}, f"As the search parameter {p}")
                    for p in ("patient", "subject", "category", "code", "date"))]  # fmt: skip
        return [(f"/{t}/$lastn", "get", _operation("lastn-Observation", t, "$lastn: the last observations of each "
                                                   "code of a patient", params, _ok("Bundle"), **about))]  # fmt: skip
    if (t, name) in _TYPE_LEVEL_OPERATIONS:
        summary, media = _TYPE_LEVEL_OPERATIONS[(t, name)]
        body = {"requestBody": {"required": True, "content": {m: {"schema": {"type": "string"}} for m in media}}}
        return [(f"/{t}/${name}", "post", _operation(f"{name}-{t}", t, f"${name}: {summary}", [], _ok("Parameters"),
                                                    **body, **about))]  # fmt: skip
    if (t, name) in _INSTANCE_OPERATIONS:
        return [
            (f"/{t}/{{id}}/${name}", method, _operation(f"{name}-{method}-{t}", t, f"${name}: {summary}",
                                                       [_path_id(), *params], _answer(t, name, answer), **body,
                                                       **about))
            for method, summary, params, answer, body in _INSTANCE_OPERATIONS[(t, name)]
        ]  # fmt: skip
    if name == "export":
        path = f"/{t}/{{id}}/$export" if t == "Group" else f"/{t}/$export"
        ids = [_path_id(description="The Group")] if t == "Group" else []
        return _export_operations(path, t, ids, about)
    # An operation this generator does not know yet: its endpoint, with a Parameters body.
    return [
        (
            f"/{t}/${name}",
            "post",
            _operation(f"{name}-{t}", t, f"${name}", [], _ok("Resource"), requestBody=_request("Parameters"), **about),
        )
    ]


#: The project's type-level operations taking a file: (type, name) → (summary, accepted media types).
_TYPE_LEVEL_OPERATIONS = {
    ("Patient", "registry-import"): (
        "the insurer's registry feed: Patients by INS, created or updated; new people notified (docs/lifecycle.md)",
        ("application/fhir+ndjson", "application/fhir+json"),
    ),
}
#: The project's instance operations: (type, name) → [(method, summary, parameters, answer, request body)].
_INSTANCE_OPERATIONS: dict[tuple[str, str], list[tuple[str, str, list, str, dict]]] = {
    ("Patient", "mask-documents"): [
        ("post", "mask (or unmask) every document of the patient for professionals", [], "OperationOutcome",
         {"requestBody": {**_request("Parameters"), "required": False}}),
    ],
    ("Patient", "activity"): [
        ("get", "the patient's activity history, newest first, labelled (fr|en)",
         [_query("lang", {"type": "string", "enum": ["fr", "en"]}, "Language of the labels"), _ref("_count")],
         "Bundle", {}),
    ],
    ("Patient", "notification-preferences"): [
        ("get", "which events notify the patient", [], "Parameters", {}),
        ("post", "change which events notify the patient", [], "Parameters", {"requestBody": _request("Parameters")}),
    ],
    ("Patient", "close"): [
        ("post", "the person closes their space (password re-entered; deletion destroys it at once)", [],
         "Patient", {"requestBody": _request("Parameters")}),
    ],
    ("Patient", "reopen"): [
        ("post", "the person reopens their closed space before its destruction", [], "Patient",
         {"requestBody": _request("Parameters")}),
    ],
    ("Patient", "invite-delegate"): [
        ("post", "invite a proche (aidant) or the second legal representative by email (the RelatedPerson)", [],
         "Resource",
         {"requestBody": _request("Parameters")}),
    ],
    ("Patient", "summary"): [
        ("get", "the patient summary (IPS document Bundle, or a PDF in French with _format=pdf)",
         [_query("_format", {"type": "string"}, "pdf for the PDF"), _query("profile", {"type": "string"},
                                                                           "The IPS Bundle profile only")],
         "Bundle", {}),
    ],
    ("DocumentReference", "mark-read"): [("post", "the patient marks the document read", [], "Resource", {})],
    ("DocumentReference", "mark-unread"): [("post", "back to unread", [], "Resource", {})],
    ("DocumentReference", "move"): [
        ("post", "move the document into a folder (List), or out of any", [], "Resource",
         {"requestBody": _request("Parameters")}),
    ],
    ("RelatedPerson", "revoke"): [("post", "end a representation or withdraw an invitation", [], "RelatedPerson", {})],
    ("Patient", "contacts"): [
        ("get", "the patient's address book: who wrote to them (searchset of PractitionerRole, Practitioner, "
         "Organization), but mailboxes on the directory's red list", [], "Bundle", {}),
    ],
    ("Communication", "mark-read"): [("post", "the recipient opened the notification or the message", [],
                                      "Communication", {})],
    ("Communication", "mark-unread"): [("post", "back to unread", [], "Communication", {})],
    ("Communication", "trash"): [("post", "the patient side moves its copy of a message to the trash", [],
                                  "Communication", {})],
    ("Communication", "restore"): [("post", "the patient side takes its copy of a message out of the trash", [],
                                    "Communication", {})],
    ("Communication", "close-thread"): [("post", "the professional who started a thread closes it to replies", [],
                                         "Communication", {})],
    ("Communication", "file-attachment"): [
        ("post", "the patient side files an attachment of a message it received into the record (201: the "
         "DocumentReference; parameters attachment valueInteger, type valueCoding, title valueString)", [],
         "DocumentReference", {"requestBody": _request("Parameters")}),
    ],
}  # fmt: skip
#: Instance operations that create a resource: 201 with it (and its Location), not 200.
_CREATING_OPERATIONS = {("Communication", "file-attachment")}


def _answer(t: str, name: str, answer: str) -> dict:
    if (t, name) in _CREATING_OPERATIONS:
        return {"201": _response(f"{answer}.created"), "4XX": _ERROR}
    return _ok(answer)


def _export_operations(path: str, tag: str, ids: list, about: dict) -> list[tuple[str, str, dict]]:
    kickoff = [
        *ids,
        _ref("Prefer-async"),
        _query(
            "_outputFormat",
            {"type": "string", "enum": ["application/fhir+ndjson", "application/ndjson", "ndjson"]},
            "Only NDJSON",
        ),
        _ref("_since"),
        _ref("_type"),
        _query("_typeFilter", {"type": "string"}, "Comma-separated searches (`Observation?category=…`)"),
    ]
    accepted = {
        "202": {
            "description": "Accepted: poll the Content-Location URL",
            "content": _json_content(_schema_ref("OperationOutcome")),
        },
        "4XX": _ERROR,
    }
    level = tag if tag != "System" else "system"
    return [
        (
            path,
            "get",
            _operation(f"export-{level}", tag, f"$export: Bulk Data export ({level})", kickoff, accepted, **about),
        ),
        (
            path,
            "post",
            _operation(
                f"export-{level}-post",
                tag,
                f"$export: Bulk Data export ({level}), POST",
                [*ids, _ref("Prefer-async")],
                accepted,
                requestBody=_request("Parameters"),
                **about,
            ),
        ),
    ]


# --- the system level ------------------------------------------------------------------------------------


def _system_paths(rest: dict, parameters: dict[str, Any], types: list[str]) -> dict[str, dict]:
    tag = "System"
    interactions = {i["code"] for i in rest.get("interaction", ())}
    search_refs = []
    for param in rest.get("searchParam", ()):
        key = f"system.{param['name']}"
        parameters[key] = _search_parameter(param)
        search_refs.append(_ref(key))
    paths: dict[str, dict] = {
        "/metadata": {
            "get": _operation(
                "capabilities",
                tag,
                "capabilities: the CapabilityStatement (what this OpenAPI document is made from)",
                [],
                _ok("Resource"),
                security=[],
            )
        },
    }
    if interactions & {"transaction", "batch"}:
        paths.setdefault("/", {})["post"] = _operation(
            "batch-transaction",
            tag,
            "batch / transaction: a Bundle of requests",
            [],
            _ok("Bundle"),
            requestBody=_request("Bundle"),
        )
    if "search-system" in interactions:
        paths.setdefault("/", {})["get"] = _operation(
            "search-system", tag, "search: across types (`_type`)", [*search_refs, *_RESULTS], _ok("Bundle")
        )
        form = {"type": "object", "properties": {p["name"]: {"type": "string"} for p in rest.get("searchParam", ())}}
        paths["/_search"] = {
            "post": _operation(
                "search-system-post",
                tag,
                "search: across types, parameters in a form body",
                [*_RESULTS],
                _ok("Bundle"),
                requestBody={"required": True, "content": {FORM: {"schema": form}}},
            )
        }
    if "history-system" in interactions:
        paths["/_history"] = {
            "get": _operation("history-system", tag, "history: every version of everything", [*_HISTORY], _ok("Bundle"))
        }
    exports = False
    for op in rest.get("operation", ()):
        if op["name"] == "export":
            exports = True
            about = {"externalDocs": {"url": op["definition"]}} if op.get("definition") else {}
            for path, method, operation in _export_operations("/$export", tag, [], about):
                paths.setdefault(path, {})[method] = operation
    if exports:
        job = _path_parameter("job", {"type": "string"}, "The export job id (from Content-Location)")
        paths["/$export-status/{job}"] = {
            "get": _operation(
                "export-status",
                tag,
                "$export: the job's status, then its manifest",
                [job],
                {
                    "200": {
                        "description": "Complete: the manifest",
                        "content": {"application/json": {"schema": _schema_ref("ExportManifest")}},
                    },
                    "202": {"description": "In progress (X-Progress, Retry-After)"},
                    "4XX": _ERROR,
                    "500": {
                        "description": "The export failed",
                        "content": _json_content(_schema_ref("OperationOutcome")),
                    },
                },
            ),
            "delete": _operation(
                "export-cancel",
                tag,
                "$export: cancel the job, delete its files",
                [job],
                {"202": _response("OperationOutcome"), "4XX": _ERROR},
            ),
        }
        file_name = _path_parameter("file", {"type": "string"}, "A file name of the manifest")
        paths["/$export-file/{job}/{file}"] = {
            "get": _operation(
                "export-file",
                tag,
                "$export: one NDJSON file of the manifest",
                [job, file_name],
                {
                    "200": {
                        "description": "NDJSON",
                        "content": {"application/fhir+ndjson": {"schema": {"type": "string"}}},
                    },
                    "4XX": _ERROR,
                },
            )
        }
    # Compartment search (GET [base]/[Compartment]/[id]/[type]): the compartments of the R4 definitions.
    known = set(types)
    common_search = [r for r in search_refs if r["$ref"].rsplit(".", 1)[-1] not in ("_type", "_list", "_filter")]
    for owner, members in sorted(compartment_definitions().items()):
        if owner not in known:
            continue
        member_types = sorted({*(m for m in members if m in known), owner})
        type_param = _path_parameter(
            "type", {"type": "string", "enum": member_types}, f"A type of the {owner} compartment"
        )
        paths[f"/{owner}/{{id}}/{{type}}"] = {
            "get": _operation(
                f"search-compartment-{owner}",
                owner,
                f"search: within the {owner} compartment",
                [_path_id(description=f"The {owner}"), type_param, *common_search, *_RESULTS],
                _ok("Bundle"),
                description="Any search parameter of `{type}` applies, as in a type search.",
            )
        }
    return paths


def _security(statement_rest: dict, base: str) -> tuple[dict, list] | None:
    """The bearer scheme and SMART's OAuth 2.0 flows, with the endpoints the statement names."""
    security = statement_rest.get("security")
    if not security:
        return None
    from ..auth.discovery import smart_configuration

    smart = smart_configuration(base)
    uris = {
        e["url"]: e["valueUri"]
        for x in security.get("extension", ())
        if x.get("url", "").endswith("/oauth-uris")
        for e in x.get("extension", ())
    }
    authorize = uris.get("authorize", smart["authorization_endpoint"])
    token = uris.get("token", smart["token_endpoint"])
    scopes = {scope: "" for scope in smart["scopes_supported"]}
    system_scopes = {s: "" for s in scopes if s.startswith("system/")}
    schemes = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": f"A SMART access token. {security.get('description', '')}",
        },
        "smart": {
            "type": "oauth2",
            "description": "SMART App Launch (authorization code + PKCE) and SMART Backend Services "
            f"(client credentials with a signed assertion): {base}/.well-known/smart-configuration",
            "flows": {
                "authorizationCode": {
                    "authorizationUrl": authorize,
                    "tokenUrl": token,
                    "refreshUrl": token,
                    "scopes": scopes,
                },
                "clientCredentials": {"tokenUrl": token, "scopes": system_scopes},
            },
        },
    }
    return schemes, [{"bearer": []}, {"smart": []}]


def build(statement: dict) -> dict:
    """The OpenAPI document of a CapabilityStatement (a dict, as ``/metadata`` serves it)."""
    rest = next(r for r in statement["rest"] if r.get("mode") == "server")
    base = statement.get("implementation", {}).get("url", "")
    software = statement.get("software", {})
    types = [entry["type"] for entry in rest.get("resource", ())]
    schemas = _schemas()
    for t in types:
        schemas[t] = {
            "type": "object",
            "description": f"A FHIR R4 {t} (http://hl7.org/fhir/R4/{t.lower()}.html), as JSON",
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string", "enum": [t]}, "id": _schema_ref("id")},
        }
    parameters = _common_parameters()
    paths = _system_paths(rest, parameters, types)
    for entry in rest.get("resource", ()):
        for path, methods in _resource_paths(entry, rest.get("searchParam", []), parameters).items():
            paths.setdefault(path, {}).update(methods)
    for path, item in paths.items():
        if not path.startswith(("/$export-status/", "/$export-file/")):
            item["parameters"] = _COMMON  # every FHIR interaction takes them (http.html#parameters)
    components: dict[str, Any] = {
        "schemas": schemas,
        "parameters": parameters,
        "responses": _responses(types),
        "requestBodies": _request_bodies(types),
    }
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"{software.get('name', 'FHIR server')} — FHIR {statement.get('fhirVersion', '')} REST API",
            "version": software.get("version", "0"),
            "description": (
                f"{statement.get('implementation', {}).get('description', '')}. Generated from the server's "
                f"CapabilityStatement ([{base}/metadata]({base}/metadata)): every resource type with its "
                "interactions, search parameters and operations. Bodies are FHIR JSON "
                "(`application/fhir+json`); every error is an OperationOutcome.\n\n"
                "Search parameter values by type (http://hl7.org/fhir/R4/search.html):\n\n"
                + "".join(f"- **{kind}**: {text}\n" for kind, text in _SEARCH_TYPES.items())
            ),
        },
        "externalDocs": {"description": "FHIR R4 RESTful API", "url": "http://hl7.org/fhir/R4/http.html"},
        "servers": [{"url": base or "/"}],
        "tags": [
            {
                "name": "System",
                "description": "Capabilities, batch/transaction, system search and history, Bulk Data export",
            }
        ]
        + [{"name": t, "externalDocs": {"url": f"http://hl7.org/fhir/R4/{t.lower()}.html"}} for t in types],
        "paths": paths,
        "components": components,
    }
    secured = _security(rest, base)
    if secured is not None:
        components["securitySchemes"], document["security"] = secured
    return document


_BASE_MARK = "http://base.fhir-server.invalid"  # stands for the base URL in the one built document


@lru_cache(maxsize=2)
def _built(smart: bool) -> bytes:
    """Built and serialized once per process (≈ 0.4 s, 4 MB), for a placeholder base URL."""
    return dumps(build(json.loads(capability_statement(_BASE_MARK, smart=smart))))


@lru_cache(maxsize=16)
def openapi_document(base: str, smart: bool = False) -> bytes:
    """The document for one base URL: the built one with the base put in (a byte replace, not a rebuild, so
    requests naming many Host headers cost little)."""
    return _built(smart).replace(_BASE_MARK.encode(), json.dumps(base)[1:-1].encode())


# --- HTTP --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _gzipped(base: str, smart: bool) -> bytes:
    return gzip.compress(openapi_document(base, smart), compresslevel=6, mtime=0)  # 4 MB → 150 kB


async def openapi_json(request: Request) -> Response:
    base, smart = base_url(request), request.app.state.auth is not None
    headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(_gzipped(base, smart), media_type="application/json", headers=headers)
    return Response(openapi_document(base, smart), media_type="application/json", headers=headers)


def _swagger_ui_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


# The files of the Swagger UI distribution the page uses (an allow-list: nothing else is served).
_ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
    "oauth2-redirect.html": "text/html; charset=utf-8",
}
# Our initializer, a file rather than an inline script so the page's CSP can forbid inline scripts.
_INIT_JS = b"""'use strict';
window.addEventListener('load', function () {
  var root = document.getElementById('swagger-ui');
  window.ui = SwaggerUIBundle({
    url: root.getAttribute('data-openapi'),
    oauth2RedirectUrl: new URL(root.getAttribute('data-redirect'), window.location.href).href,
    dom_id: '#swagger-ui',
    deepLinking: true,
    docExpansion: 'none',
    defaultModelsExpandDepth: 0,
    filter: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout'
  });
  window.ui.initOAuth({usePkceWithAuthorizationCodeGrant: true, scopes: 'openid fhirUser launch/patient patient/*.rs'});
});
"""


@lru_cache(maxsize=8)
def _asset(name: str) -> bytes:
    if name == "init.js":
        return _INIT_JS
    return (_swagger_ui_dir() / name).read_bytes()


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{root}/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="{root}/docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui" data-openapi="{root}/openapi.json" data-redirect="{root}/docs/oauth2-redirect.html"></div>
<script src="{root}/docs/swagger-ui-bundle.js"></script>
<script src="{root}/docs/init.js"></script>
</body>
</html>
"""


def _csp(base: str) -> str:
    # Swagger UI styles elements inline and shows images as data: URLs; scripts and fetches stay on this server.
    return (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        f"connect-src 'self' {base}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


async def docs_page(request: Request) -> Response:
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    page = _PAGE.format(title="fhir-server FHIR API", root=root)
    headers = {
        "Content-Security-Policy": _csp(base_url(request)),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    return Response(page, media_type="text/html; charset=utf-8", headers=headers)


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = "text/javascript; charset=utf-8" if name == "init.js" else _ASSET_TYPES.get(name)
    if media_type is None:
        raise not_found(f"No file {name!r} in the API documentation")
    headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
    return Response(_asset(name), media_type=media_type, headers=headers)


routes = [
    Route(OPENAPI_PATH, openapi_json, methods=["GET"], name="openapi"),
    Route(DOCS_PATH, docs_page, methods=["GET"], name="docs"),
    Route(DOCS_PATH + "/{name}", docs_asset, methods=["GET"], name="docs_asset"),
]

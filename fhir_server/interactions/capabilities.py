"""capabilities: the CapabilityStatement lists exactly what this server implements."""

from __future__ import annotations

from functools import lru_cache

from .. import FHIR_VERSION, __version__
from ..fhirjson import dumps
from ..instant import now_us, to_instant
from ..search.indexing import WORD_PARAMETERS
from ..search.registry import parameters_of
from ..validation import R4_RESOURCE_TYPES
from ..validation.profiles import supported_profiles
from .crud import IMMUTABLE_TYPES

_STARTED = to_instant(now_us())
_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
_CORE = "http://hl7.org/fhir/OperationDefinition"
RESOURCE_OPERATIONS = [
    {"name": name, "definition": f"{_CORE}/Resource-{name}"} for name in ("validate", "meta", "meta-add", "meta-delete")
]
#: The project's own operations (docs/policy.md, docs/audit.md, docs/notifications.md, docs/lifecycle.md,
#: docs/medical-record.md, docs/messaging.md).
PROJECT_OPERATION = "https://github.com/fhir-server/fhir-server/OperationDefinition/"
TYPE_OPERATIONS = {
    "Patient": [
        {"name": "everything", "definition": f"{_CORE}/Patient-everything"},
        {"name": "export", "definition": f"{_BULK}/patient-export"},
        *({"name": name, "definition": f"{PROJECT_OPERATION}Patient-{name}"}
          for name in ("mask-documents", "activity", "notification-preferences", "registry-import", "close",
                       "reopen", "invite-delegate", "contacts")),
        {"name": "summary", "definition": "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"},
    ],
    "Observation": [{"name": "lastn", "definition": f"{_CORE}/Observation-lastn"}],
    "DocumentReference": [
        {"name": name, "definition": f"{PROJECT_OPERATION}DocumentReference-{name}"}
        for name in ("mark-read", "mark-unread", "move")
    ],
    "RelatedPerson": [{"name": "revoke", "definition": f"{PROJECT_OPERATION}RelatedPerson-revoke"}],
    "Group": [{"name": "export", "definition": f"{_BULK}/group-export"}],
    "Communication": [
        {"name": name, "definition": f"{PROJECT_OPERATION}Communication-{name}"}
        for name in ("mark-read", "mark-unread", "trash", "restore", "close-thread", "file-attachment")
    ],
}  # fmt: skip
#: R4 has no CapabilityStatement element for the Subscription channels a server runs (its only extension,
#: capabilitystatement-websocket, names a websocket endpoint, which this server has not): they are stated in
#: the resource's ``documentation`` (docs/notifications.md).
RESOURCE_DOCUMENTATION = {
    "Subscription": "R4 Subscriptions, evaluated on every create and update. Supported channel.type: "
    "`rest-hook` (endpoint: an absolute http(s) URL; no payload: an empty POST to the endpoint; payload "
    "`application/fhir+json`: the resource PUT to [endpoint]/[type]/[id]) and `email` (endpoint `mailto:`; the "
    "notification names the resource type and its link, never its content). Not supported: websocket, sms, "
    "message. A Subscription is its owner's and notifies only about what the owner's token may read.",
}
_INTERACTIONS = [
    "read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type",
]  # fmt: skip


def _searchable(code: str, definition: dict) -> bool:
    """Parameters with an expression, and the word parameters (``_text``…) the index has switched on."""
    if code in ("_text", "_content"):
        return code in WORD_PARAMETERS
    return definition["type"] != "special" and bool(definition.get("expression"))


@lru_cache(maxsize=1)
def _revincludes() -> dict[str, list[str]]:
    """target type → the ``Source:param`` references that can point at it (searchRevInclude)."""
    table: dict[str, set[str]] = {}
    for source in R4_RESOURCE_TYPES:
        for code, d in parameters_of(source).items():
            if d["type"] == "reference" and d.get("expression"):
                for target in d.get("target", ()):
                    table.setdefault(target, set()).add(f"{source}:{code}")
    return {t: sorted(v) for t, v in table.items()}


def _resource(type_: str) -> dict:
    parameters = sorted((c, d) for c, d in parameters_of(type_).items() if _searchable(c, d))
    search = [{"name": code, "definition": d["url"], "type": d["type"]} for code, d in parameters]
    includes = [f"{type_}:{code}" for code, d in parameters if d["type"] == "reference"]
    immutable = type_ in IMMUTABLE_TYPES  # created, never changed (AuditEvent: docs/audit.md)
    entry = {
        "type": type_,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
        "supportedProfile": supported_profiles(type_),  # this server's own (profiles/), checked by $validate
        "documentation": RESOURCE_DOCUMENTATION.get(type_),
        "interaction": [{"code": c} for c in _INTERACTIONS if not (immutable and c in ("update", "patch", "delete"))],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": not immutable,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": not immutable,
        "conditionalDelete": "not-supported" if immutable else "multiple",
        "searchInclude": [*includes, f"{type_}:*"] if includes else [],
        "searchRevInclude": _revincludes().get(type_, []),
        "searchParam": search,
    }
    entry["operation"] = [*RESOURCE_OPERATIONS, *TYPE_OPERATIONS.get(type_, [])]
    return {k: v for k, v in entry.items() if v != [] and v is not None}


# Parameters of every type, and of system-level search (GET [base]?_type=…&…).
_SP = "http://hl7.org/fhir/SearchParameter"
_COMMON = (("_id", "token"), ("_lastUpdated", "date"), ("_tag", "token"), ("_profile", "uri"),
           ("_security", "token"), ("_source", "uri"))  # fmt: skip
SYSTEM_SEARCH_PARAMETERS = [
    *({"name": c, "definition": f"{_SP}/Resource-{c[1:]}", "type": t} for c, t in _COMMON),
    {"name": "_type", "type": "special", "documentation": "System-level search: the resource types to search"},
    {"name": "_list", "type": "special", "documentation": "Members of the List of that id (of the searched type)"},
    {
        "name": "_filter",
        "definition": "http://hl7.org/fhir/SearchParameter/filter",
        "type": "special",
        "documentation": "search_filter.html: comparisons with and / or / not (…), chains; no [filter] paths, ew, po",
    },
]


@lru_cache(maxsize=16)
def capability_statement(base: str, smart: bool = False) -> bytes:
    """``smart``: SMART authorization is on, so ``rest.security`` names the OAuth endpoints."""
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _STARTED,
        "publisher": "fhir-server (Mon espace santé model)",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "FHIR R4 health-data server", "url": base},
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "resource": [_resource(t) for t in sorted(R4_RESOURCE_TYPES)],
                "interaction": [
                    {"code": "search-system"},
                    {"code": "history-system"},
                    {"code": "transaction"},
                    {"code": "batch"},
                ],
                "searchParam": SYSTEM_SEARCH_PARAMETERS,
                "operation": [{"name": "export", "definition": f"{_BULK}/export"}],
            }
        ],
    }
    if smart:
        from ..auth.discovery import security_element

        statement["rest"][0]["security"] = security_element(base)
    return dumps(statement)

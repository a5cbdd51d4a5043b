"""capabilities: the CapabilityStatement lists exactly what this server implements."""

from __future__ import annotations

from functools import lru_cache

from .. import FHIR_VERSION, __version__
from ..fhirjson import dumps
from ..instant import now_us, to_instant
from ..search.registry import parameters_of
from ..validation import R4_RESOURCE_TYPES

_STARTED = to_instant(now_us())
_INTERACTIONS = [
    "read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type",
]  # fmt: skip


def _resource(type_: str) -> dict:
    search = [
        {"name": code, "definition": d["url"], "type": d["type"]}
        for code, d in sorted(parameters_of(type_).items())
        if d["type"] != "special"
    ]
    return {
        "type": type_,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
        "interaction": [{"code": code} for code in _INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "multiple",
        "searchParam": search,
    }


@lru_cache(maxsize=16)
def capability_statement(base: str) -> bytes:
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _STARTED,
        "publisher": "fhir-server (Mon espace santé model)",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "FHIR R4 health-data server", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/json"],
        "rest": [
            {
                "mode": "server",
                "resource": [_resource(t) for t in sorted(R4_RESOURCE_TYPES)],
                "interaction": [{"code": "history-system"}],
            }
        ],
    }
    return dumps(statement)

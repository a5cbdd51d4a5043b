"""FHIR responses: stored bytes out as they are, with ETag / Last-Modified / Location, and Bundles."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..fhirjson import dumps
from ..instant import to_http_date, to_instant
from ..store import ResourceVersion
from .negotiation import is_pretty, response_media_type


def base_url(request: Request) -> str:
    configured = request.app.state.settings.base_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


def _pretty(body: bytes) -> bytes:
    return dumps(json.loads(body, parse_float=Decimal), pretty=True)


def fhir_response(
    request: Request, body: bytes | None, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    media_type = response_media_type(request)
    if body is not None and is_pretty(request):
        body = _pretty(body)
    return Response(body, status_code=status, headers=headers, media_type=f"{media_type}; charset=utf-8")


def version_headers(version: ResourceVersion) -> dict[str, str]:
    return {"ETag": f'W/"{version.version}"', "Last-Modified": to_http_date(version.last_updated)}


def location(request: Request, version: ResourceVersion) -> str:
    return f"{base_url(request)}/{version.type}/{version.id}/_history/{version.version}"


def prefer_return(request: Request) -> str:
    """``Prefer: return=minimal|representation|OperationOutcome`` (default representation)."""
    for part in request.headers.get("prefer", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return "representation"


def write_response(request: Request, version: ResourceVersion, status: int, *, with_location: bool = False) -> Response:
    """The answer to create/update: body per Prefer, Location on 201 (and where the caller asks for it)."""
    headers = version_headers(version)
    if status == 201 or with_location:
        headers["Location"] = location(request, version)
    preference = prefer_return(request)
    if preference == "minimal":
        return fhir_response(request, None, status, headers)
    if preference == "OperationOutcome":
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"{version.type}/{version.id} version {version.version} stored",
                }
            ],
        }
        return fhir_response(request, dumps(outcome), status, headers)
    return fhir_response(request, version.body, status, headers)


def bundle_entry(base: str, version: ResourceVersion, *, with_request: bool = False) -> dict:
    """An entry whose resource is spliced in as the stored bytes (no parse, no model round trip)."""
    entry: dict = {"fullUrl": f"{base}/{version.type}/{version.id}"}
    if version.body is not None:
        entry["resource"] = orjson.Fragment(version.body)
    if with_request:
        url = version.type if version.method == "POST" else f"{version.type}/{version.id}"
        entry["request"] = {"method": version.method, "url": url}
        entry["response"] = {
            "status": {"POST": "201", "DELETE": "204"}.get(version.method, "200"),
            "etag": f'W/"{version.version}"',
            "lastModified": to_instant(version.last_updated),
        }
    return entry


#: On ``Bundle.total`` (JSON ``_total``): how the server obtained it when it is not an exact count
#: (``estimate``) or why there is none (``omitted``: too costly by default, ``_total=accurate`` counts).
TOTAL_METHOD = "https://github.com/fhir-server/fhir-server/StructureDefinition/search-total-method"


def bundle(
    type_: str, entries: list[dict], *, total: int | None, links: list[tuple[str, str]], total_method: str | None = None
) -> bytes:
    doc: dict = {"resourceType": "Bundle", "type": type_}
    if total is not None:
        doc["total"] = total
    if total_method is not None:
        doc["_total"] = {"extension": [{"url": TOTAL_METHOD, "valueCode": total_method}]}
    if links:
        doc["link"] = [{"relation": relation, "url": url} for relation, url in links]
    if entries:  # FHIR JSON has no empty arrays
        doc["entry"] = entries
    return dumps(doc)

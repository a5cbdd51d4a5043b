"""``POST [base]``: batch and transaction Bundles in, batch-response / transaction-response out."""

from __future__ import annotations

from http import HTTPStatus

from orjson import Fragment
from starlette.requests import Request
from starlette.responses import Response

from ..errors import operation_outcome
from ..fhirjson import dumps
from ..instant import to_instant
from ..interactions import bundles
from .body import read_resource
from .caller import context
from .responses import base_url, fhir_response, prefer_return
from .searchset import searchset


async def process_bundle(request: Request) -> Response:
    ctx = context(request)
    base = base_url(request)
    body = await read_resource(request)
    kind, entries = bundles.parse_entries(body, base, ctx.settings.max_bundle_entries)
    run = bundles.transaction if kind == "transaction" else bundles.batch
    results = await run(ctx, entries)
    with_body = prefer_return(request) == "representation"
    response = {
        "resourceType": "Bundle",
        "type": f"{kind}-response",
        "entry": [_entry(base, result, with_body) for result in results],
    }
    if not response["entry"]:
        del response["entry"]
    return fhir_response(request, dumps(response))


def _entry(base: str, result: bundles.EntryResult, with_body: bool) -> dict:
    status = f"{result.status} {HTTPStatus(result.status).phrase}"
    entry: dict = {}
    answer: dict = {"status": status}
    version = result.version
    if version is not None:
        entry["fullUrl"] = f"{base}/{version.type}/{version.id}"
        if version.body is not None and (with_body or result.read):
            entry["resource"] = Fragment(version.body)
        if result.status in (200, 201):
            answer["location"] = f"{version.type}/{version.id}/_history/{version.version}"
        answer["etag"] = f'W/"{version.version}"'
        answer["lastModified"] = to_instant(version.last_updated)
    if result.search is not None:
        request, page, path = result.search
        entry["resource"] = Fragment(searchset(base, path, request, page))
    if result.outcome:
        answer["outcome"] = operation_outcome(result.outcome)
    entry["response"] = answer
    return entry

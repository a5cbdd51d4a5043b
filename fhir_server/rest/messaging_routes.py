"""The messaging's operations (docs/messaging.md): ``Communication/[id]/$trash``, ``$restore``,
``$close-thread``, ``$file-attachment`` and ``Patient/[id]/$contacts``. Sending, replying and drafts are plain
FHIR writes of ``Communication``; read marks are ``$mark-read`` / ``$mark-unread`` (operation_routes)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..fhirjson import dumps
from ..instant import now_us, to_instant
from ..messaging import mailbox
from .body import read_resource
from .responses import base_url, fhir_response
from .routes import context, route


@route("/Communication/{resource_id:id}/$trash", "POST")
async def trash(request: Request, resource_id: str) -> Response:
    found = await mailbox.trash(context(request), resource_id, into=True)
    return fhir_response(request, found.body)


@route("/Communication/{resource_id:id}/$restore", "POST")
async def restore(request: Request, resource_id: str) -> Response:
    found = await mailbox.trash(context(request), resource_id, into=False)
    return fhir_response(request, found.body)


@route("/Communication/{resource_id:id}/$close-thread", "POST")
async def close_thread(request: Request, resource_id: str) -> Response:
    found = await mailbox.close_thread(context(request), resource_id)
    return fhir_response(request, found.body)


@route("/Communication/{resource_id:id}/$file-attachment", "POST")
async def file_attachment(request: Request, resource_id: str) -> Response:
    found = await mailbox.file_attachment(context(request), resource_id, await read_resource(request))
    return fhir_response(request, found.body, status=201, headers={
        "Location": f"{base_url(request)}/DocumentReference/{found.id}/_history/{found.version}"})  # fmt: skip


@route("/Patient/{resource_id:id}/$contacts", "GET")
async def contacts(request: Request, resource_id: str) -> Response:
    found = await mailbox.contacts(context(request), resource_id)
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": to_instant(now_us()),
        "total": len(found),
        "entry": [
            {
                "fullUrl": f"{base_url(request)}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in found
        ],
    }
    return fhir_response(request, dumps(bundle))

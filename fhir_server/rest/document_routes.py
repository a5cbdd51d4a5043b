"""The patient's actions on documents: ``DocumentReference/[id]/$mark-read``, ``$mark-unread`` and ``$move``
(docs/medical-record.md, "The patient's own documents"); ``$meta-add`` / ``$meta-delete`` of a document keep its
read mark the patient side's."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..errors import Issue, bad_request, operation_outcome
from ..fhirjson import dumps
from ..interactions import operations
from ..policy.access import require_patient_side
from ..record import documents, folders
from .body import read_resource
from .caller import context
from .responses import fhir_response
from .routes import route

_READ_TAG = {"system": documents.READ_STATE, "code": documents.READ}


async def _mark(request: Request, resource_id: str, read: bool) -> Response:
    ctx = context(request)
    require_patient_side(ctx.access, "marks a document read or unread")
    # $meta-add/-delete's rewrite: no new version, so no "document updated" event nor professional-visible change
    change = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [_READ_TAG]}}]}
    meta = await operations.change_meta(ctx, "DocumentReference", resource_id, change, add=read)
    return fhir_response(request, dumps(operations.meta_parameters(meta)))


@route("/DocumentReference/{resource_id:id}/$mark-read", "POST")
async def mark_read(request: Request, resource_id: str) -> Response:
    return await _mark(request, resource_id, read=True)


@route("/DocumentReference/{resource_id:id}/$mark-unread", "POST")
async def mark_unread(request: Request, resource_id: str) -> Response:
    return await _mark(request, resource_id, read=False)


async def _meta(request: Request, resource_id: str, version_id: str | None, add: bool) -> Response:
    """``$meta-add`` / ``$meta-delete`` on a document: as for any resource, but the read mark stays the patient
    side's (registered before the generic routes of operation_routes, which app.py imports after this module)."""
    ctx = context(request)
    body = await read_resource(request)
    tags = (
        ((operations.parameter(body, "meta") or {}).get("valueMeta") or {}).get("tag") if isinstance(body, dict) else ()
    )
    if any(isinstance(t, dict) and t.get("system") == documents.READ_STATE for t in tags or ()):
        require_patient_side(ctx.access, "marks a document read or unread")
    meta = await operations.change_meta(ctx, "DocumentReference", resource_id, body, add=add, version_id=version_id)
    return fhir_response(request, dumps(operations.meta_parameters(meta)))


@route("/DocumentReference/{resource_id:id}/$meta-add", "POST")
async def meta_add(request: Request, resource_id: str) -> Response:
    return await _meta(request, resource_id, None, add=True)


@route("/DocumentReference/{resource_id:id}/$meta-delete", "POST")
async def meta_delete(request: Request, resource_id: str) -> Response:
    return await _meta(request, resource_id, None, add=False)


@route("/DocumentReference/{resource_id:id}/_history/{version_id:id}/$meta-add", "POST")
async def meta_add_version(request: Request, resource_id: str, version_id: str) -> Response:
    return await _meta(request, resource_id, version_id, add=True)


@route("/DocumentReference/{resource_id:id}/_history/{version_id:id}/$meta-delete", "POST")
async def meta_delete_version(request: Request, resource_id: str, version_id: str) -> Response:
    return await _meta(request, resource_id, version_id, add=False)


@route("/DocumentReference/{resource_id:id}/$move", "POST")
async def move(request: Request, resource_id: str) -> Response:
    """Body: a Parameters with ``folder`` = ``valueReference`` ``List/[id]``; without it the document leaves its
    folder."""
    ctx = context(request)
    require_patient_side(ctx.access, "files documents in folders")
    body = await read_resource(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("$move takes a Parameters resource")
    part = operations.parameter(body, "folder")
    target = ((part or {}).get("valueReference") or {}).get("reference")
    if part is not None and not (isinstance(target, str) and target.startswith("List/")):
        raise bad_request("folder is a valueReference to List/[id]")
    written = await folders.move(ctx, resource_id, target)
    where = f"in {target}" if target else "in no folder"
    text = f"DocumentReference/{resource_id} is {where}; written: {', '.join(written) or 'none'}"
    outcome = operation_outcome([Issue("informational", text, severity="information")])
    return fhir_response(request, dumps(outcome))

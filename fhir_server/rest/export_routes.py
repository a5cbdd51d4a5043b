"""Bulk Data ``$export`` over HTTP (https://hl7.org/fhir/uv/bulkdata/export.html): kick-off, status, files.

Registered by ``routes`` (``routes.extend(export_routes.routes)``); its type/id path convertors keep the
generic ``[type]/[id]`` patterns off these paths.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.utils import formatdate

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ..errors import Issue, bad_request, method_not_allowed, not_found, operation_outcome
from ..fhirjson import dumps
from ..interactions import Context
from ..interactions.export import RETRY_AFTER_SECONDS, ExportManager, Level, manifest, parse_kickoff
from .body import read_resource
from .caller import context
from .negotiation import response_media_type
from .responses import base_url

routes: list[Route] = []

GENERAL = ("_format", "_pretty")
NDJSON = "application/fhir+ndjson"


def route(path: str, *methods: str) -> Callable:
    def register(endpoint: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await endpoint(request, **request.path_params)

        routes.append(Route(path, handle, methods=list(methods), name=endpoint.__name__))
        return endpoint

    return register


def _manager(request: Request) -> ExportManager:
    return request.app.state.exports


def _context(request: Request) -> Context:
    return context(request)


def _owner(request: Request) -> str:
    return context(request).access.owner()


def _preferences(request: Request) -> set[str]:
    """The ``Prefer`` tokens (``respond-async``, ``handling=lenient``), lower-cased, spaces removed."""
    found = set()
    for header in request.headers.getlist("prefer"):
        for part in header.replace(";", ",").split(","):
            token = part.replace(" ", "").replace('"', "").lower()
            if token:
                found.add(token)
    return found


def _outcome(status: int, severity: str, code: str, text: str, headers: dict[str, str] | None = None) -> Response:
    body = dumps(operation_outcome([Issue(code, text, severity=severity)]))
    return Response(body, status_code=status, headers=headers, media_type="application/fhir+json; charset=utf-8")


async def _parameters(request: Request) -> list[tuple[str, str]]:
    """GET: the query string; POST: the query string and a Parameters body (valueString, valueInstant…)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in GENERAL]
    if request.method != "POST":
        return params
    body = await read_resource(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The $export POST body must be a Parameters resource")
    for parameter in body.get("parameter") or ():
        name = parameter.get("name") if isinstance(parameter, dict) else None
        values = [v for k, v in parameter.items() if k.startswith("value")] if name else []
        if not isinstance(name, str) or len(values) != 1:
            raise bad_request("Each Parameters.parameter needs a name and one value[x]")
        if not isinstance(values[0], str):
            if name == "patient":  # valueReference: a parameter of the spec this server does not implement
                values[0] = ""
            else:
                raise bad_request(f"$export parameter {name} takes a string value")
        params.append((name, values[0]))
    return params


async def _kickoff(request: Request, level: Level, group_id: str | None = None) -> Response:
    if request.method == "HEAD":  # Starlette adds HEAD to GET routes; a kick-off is not safe
        raise method_not_allowed("HEAD does not start an export: use GET or POST")
    response_media_type(request)  # Accept: application/fhir+json (or none); else 406
    preferences = _preferences(request)
    if "respond-async" not in preferences:
        raise bad_request("$export runs asynchronously: send the header Prefer: respond-async")
    ctx = _context(request)
    base = base_url(request)
    export = await parse_kickoff(
        ctx,
        level,
        await _parameters(request),
        base=base,
        url=str(request.url),
        group_id=group_id,
        lenient="handling=lenient" in preferences,
    )
    job = _manager(request).submit(ctx, export)
    location = f"{base}/$export-status/{job.id}"
    return _outcome(202, "information", "informational", f"Export job accepted: poll {location}",
                    {"Content-Location": location})  # fmt: skip


@route("/$export", "GET", "POST")
async def export_system(request: Request) -> Response:
    return await _kickoff(request, "system")


@route("/Patient/$export", "GET", "POST")
async def export_patients(request: Request) -> Response:
    return await _kickoff(request, "patient")


@route("/Group/$export", "GET", "POST")
async def export_group_without_id(request: Request) -> Response:
    # Bulk Data exports a Group by id only ([base]/Group/[id]/$export): say so rather than "no such route".
    raise bad_request("Group export needs a Group id: [base]/Group/[id]/$export")


@route("/Group/{group_id}/$export", "GET", "POST")
async def export_group(request: Request, group_id: str) -> Response:
    return await _kickoff(request, "group", group_id)


@route("/$export-status/{job_id}", "GET")
async def export_status(request: Request, job_id: str) -> Response:
    state = _manager(request).status(job_id, _owner(request))
    if state is None:
        raise not_found(f"No export job {job_id!r} (unknown, deleted or expired)")
    if state["status"] in ("queued", "running"):
        headers = {"X-Progress": state["progress"][:100], "Retry-After": str(RETRY_AFTER_SECONDS)}
        return Response(status_code=202, headers=headers)
    if state["status"] == "failed":
        return _outcome(500, "error", "exception", state["error"] or "The export failed")
    headers = {"Expires": formatdate(state["expires"], usegmt=True)}
    body = dumps(manifest(state, base_url(request)))
    return Response(body, status_code=200, headers=headers, media_type="application/json")


@route("/$export-status/{job_id}", "DELETE")
async def export_cancel(request: Request, job_id: str) -> Response:
    if not _manager(request).cancel(job_id, _owner(request)):
        raise not_found(f"No export job {job_id!r} (unknown, deleted or expired)")
    return _outcome(202, "information", "informational", "Export job cancelled; its files are deleted")


@route("/$export-file/{job_id}/{file_name}", "GET")
async def export_file(request: Request, job_id: str, file_name: str) -> Response:
    path = _manager(request).file(job_id, file_name, _owner(request))
    if path is None:
        raise not_found(f"No export file {file_name!r} for job {job_id!r}")
    return FileResponse(path, media_type=NDJSON)

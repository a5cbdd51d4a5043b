"""The FHIR REST API surface (http://hl7.org/fhir/R4/http.html). Routes are thin: HTTP in, FHIR rules, out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import bad_request, not_found
from ..instant import from_http_date
from ..interactions import crud
from ..interactions import history as history_interaction
from ..interactions import search as search_interaction
from ..interactions.capabilities import capability_statement
from ..store import ResourceVersion
from ..validation import R4_RESOURCE_TYPES
from . import export_routes, system_search_routes
from .body import form_parameters, read_limited, read_resource
from .bundle_routes import process_bundle
from .caller import context
from .responses import (
    base_url,
    bundle,
    bundle_entry,
    fhir_response,
    version_headers,
    write_response,
)
from .searchset import searchset


class TypeConvertor(Convertor):
    """A resource type name: never ``$operation``, ``_history``, ``metadata``."""

    regex = "[A-Z][A-Za-z]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class IdConvertor(TypeConvertor):
    """A FHIR id (http://hl7.org/fhir/R4/datatypes.html#id): so ``$everything`` is never taken for one."""

    regex = "[A-Za-z0-9\\-\\.]{1,64}"


class BadIdConvertor(TypeConvertor):
    """What an id can never be (a character outside the id alphabet, or longer than 64), operations aside."""

    regex = "(?!\\$)(?:[^/]*[^A-Za-z0-9\\-\\./][^/]*|[A-Za-z0-9\\-\\.]{65,})"


register_url_convertor("type", TypeConvertor())
register_url_convertor("id", IdConvertor())
register_url_convertor("bad_id", BadIdConvertor())

# Plain Starlette routes, not FastAPI's: FHIR endpoints take no typed parameters, and FastAPI's
# dependency solving would cost more than the work of a read (measured: about half of it).
routes: list[Route] = []


def route(path: str, method: str) -> Callable:
    def register(endpoint: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await endpoint(request, **request.path_params)

        routes.append(Route(path, handle, methods=[method], name=endpoint.__name__))
        return endpoint

    return register


# Parameters every interaction accepts (http://hl7.org/fhir/R4/http.html#parameters).
GENERAL = ("_format", "_pretty")


def resource_type(name: str) -> str:
    if name not in R4_RESOURCE_TYPES:
        raise not_found(f"Unknown resource type {name!r}")
    return name


def query_params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key not in GENERAL:
            params.setdefault(key, []).append(value)
    return params


def criteria(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k not in GENERAL]


def _not_modified(request: Request, version: ResourceVersion) -> bool:
    """Conditional read: If-None-Match on the ETag, else If-Modified-Since at second precision."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or f'"{version.version}"' in tags
    since = request.headers.get("if-modified-since")
    if since is not None:
        limit = from_http_date(since)
        return limit is not None and version.last_updated // 1_000_000 <= limit // 1_000_000
    return False


@route("/metadata", "GET")
async def metadata(request: Request) -> Response:
    return fhir_response(request, capability_statement(base_url(request), smart=request.app.state.auth is not None))


@route("/", "POST")
async def batch_or_transaction(request: Request) -> Response:
    return await process_bundle(request)


@route("/_history", "GET")
async def history_system(request: Request) -> Response:
    return await _history(request, None, None, "_history")


@route("/{type_name:type}/_history", "GET")
async def history_type(request: Request, type_name: str) -> Response:
    return await _history(request, resource_type(type_name), None, f"{type_name}/_history")


@route("/{type_name:type}/{resource_id:id}/_history", "GET")
async def history_instance(request: Request, type_name: str, resource_id: str) -> Response:
    path = f"{type_name}/{resource_id}/_history"
    return await _history(request, resource_type(type_name), resource_id, path)


async def _history(request: Request, type_: str | None, id_: str | None, path: str) -> Response:
    params = query_params(request)
    page = await history_interaction.history(context(request), params, type_, id_)
    base = base_url(request)
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "_cursor"]
    links = [("self", f"{base}/{path}" + (f"?{urlencode(kept)}" if kept else ""))]
    if page.next_cursor:
        links.append(("next", f"{base}/{path}?{urlencode([*kept, ('_cursor', page.next_cursor)])}"))
    entries = [bundle_entry(base, v, with_request=True) for v in page.versions]
    return fhir_response(request, bundle("history", entries, total=page.total, links=links))


@route("/{type_name:type}", "GET")
async def search_type(request: Request, type_name: str) -> Response:
    return await _search(request, resource_type(type_name), criteria(request))


@route("/{type_name:type}/_search", "POST")
async def search_type_post(request: Request, type_name: str) -> Response:
    """POST _search: form-encoded parameters (and any in the URL), same answer as GET."""
    type_ = resource_type(type_name)
    form = await form_parameters(request)
    return await _search(request, type_, [*criteria(request), *((k, v) for k, v in form if k not in GENERAL)])


async def _search(
    request: Request, type_: str, params: list[tuple[str, str]], constraints: tuple = (), path: str = ""
) -> Response:
    ctx = context(request)
    base = base_url(request)
    lenient = "handling=lenient" in request.headers.get("prefer", "")
    parsed = await search_interaction.parse_request(
        ctx, type_, params, base=base, lenient=lenient, constraints=constraints
    )
    page = await search_interaction.search(ctx, parsed)
    return fhir_response(request, searchset(base, path or type_, parsed, page))


@route("/{compartment:type}/{owner_id:id}/{type_name:type}", "GET")
async def search_compartment(request: Request, compartment: str, owner_id: str, type_name: str) -> Response:
    """Compartment search, e.g. ``GET /Patient/123/Observation?code=…``."""
    type_ = resource_type(type_name)
    constraint = search_interaction.compartment(resource_type(compartment), owner_id, type_)
    path = f"{compartment}/{owner_id}/{type_}"
    return await _search(request, type_, criteria(request), (constraint,), path)


@route("/{type_name:type}/{resource_id:id}/_history/{version_id:id}", "GET")
async def vread(request: Request, type_name: str, resource_id: str, version_id: str) -> Response:
    found = await crud.vread(context(request), resource_type(type_name), resource_id, version_id)
    return fhir_response(request, found.body, headers=version_headers(found))


@route("/{type_name:type}/{resource_id:id}", "GET")
async def read(request: Request, type_name: str, resource_id: str) -> Response:
    found = await crud.read(context(request), resource_type(type_name), resource_id)
    if _not_modified(request, found):
        return Response(status_code=304, headers=version_headers(found))
    return fhir_response(request, found.body, headers=version_headers(found))


@route("/{type_name:type}", "POST")
async def create(request: Request, type_name: str) -> Response:
    type_ = resource_type(type_name)
    if names := sorted({key for key, _ in criteria(request)}):
        # R4 create takes no search criteria: a client sending them expects a conditional create, and
        # creating regardless would duplicate what it meant to find (http.html#ccreate).
        raise bad_request(
            f"POST /{type_} takes no search parameters (got {', '.join(names)}): a conditional create sends its "
            "criteria in the If-None-Exist header, e.g. If-None-Exist: identifier=system|value"
        )
    resource = await read_resource(request)
    result = await crud.create(context(request), type_, resource, request.headers.get("if-none-exist"))
    # A matching conditional create answers 200 with the existing resource and where it lives, so a client
    # can follow it as it would a 201.
    return write_response(request, result.version, 201 if result.created else 200, with_location=True)


@route("/{type_name:type}/{resource_id:id}", "PUT")
async def update(request: Request, type_name: str, resource_id: str) -> Response:
    type_ = resource_type(type_name)
    resource = await read_resource(request)
    result = await crud.update(context(request), type_, resource_id, resource, request.headers.get("if-match"))
    return write_response(request, result.version, 201 if result.created else 200)


@route("/{type_name:type}", "PUT")
async def conditional_update(request: Request, type_name: str) -> Response:
    type_ = resource_type(type_name)
    resource = await read_resource(request)
    result = await crud.conditional_update(context(request), type_, criteria(request), resource)
    return write_response(request, result.version, 201 if result.created else 200)


@route("/{type_name:type}/{resource_id:id}", "DELETE")
async def delete(request: Request, type_name: str, resource_id: str) -> Response:
    type_ = resource_type(type_name)
    deleted = await crud.delete(context(request), type_, resource_id, request.headers.get("if-match"))
    headers = {"ETag": f'W/"{deleted.version}"'} if deleted else None
    return Response(status_code=204, headers=headers)


@route("/{type_name:type}", "DELETE")
async def conditional_delete(request: Request, type_name: str) -> Response:
    type_ = resource_type(type_name)
    await crud.conditional_delete(context(request), type_, criteria(request))
    return Response(status_code=204)


async def invalid_id(request: Request) -> Response:
    raise bad_request(f"{request.path_params['bad_id']!r} is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})")


# Registered last (after every operation route): a path naming a type and an impossible id.
INVALID_ID = Route("/{type_name:type}/{bad_id:bad_id}", invalid_id, methods=["GET", "PUT", "DELETE", "PATCH"])


# --- patch (http://hl7.org/fhir/R4/http.html#patch): JSON Patch or FHIRPath Patch, see interactions.patch ---

from ..interactions import patch as patch_interaction  # noqa: E402 - kept with the routes that use it


@route("/{type_name:type}/{resource_id:id}", "PATCH")
async def patch(request: Request, type_name: str, resource_id: str) -> Response:
    type_ = resource_type(type_name)
    body = await read_limited(request, request.app.state.settings.max_body_bytes)
    result = await patch_interaction.patch(
        context(request),
        type_,
        resource_id,
        body,
        request.headers.get("content-type"),
        request.headers.get("if-match"),
    )
    return write_response(request, result.version, 200)


@route("/{type_name:type}", "PATCH")
async def conditional_patch(request: Request, type_name: str) -> Response:
    type_ = resource_type(type_name)
    body = await read_limited(request, request.app.state.settings.max_body_bytes)
    result = await patch_interaction.conditional_patch(
        context(request),
        type_,
        criteria(request),
        body,
        request.headers.get("content-type"),
        request.headers.get("if-match"),
    )
    return write_response(request, result.version, 200)


routes.extend(export_routes.routes)
routes.extend(system_search_routes.routes)

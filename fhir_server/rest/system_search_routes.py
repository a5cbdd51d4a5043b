"""System-level search (http://hl7.org/fhir/R4/search.html#_type): ``GET [base]?_type=A,B&…`` and
``POST [base]/_search`` (form body). ``POST [base]`` stays the batch/transaction endpoint."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..interactions import search as search_interaction
from .body import form_parameters
from .caller import context
from .responses import base_url, fhir_response
from .searchset import searchset

GENERAL = ("_format", "_pretty")


def _criteria(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k not in GENERAL]


async def search_system(request: Request) -> Response:
    return await _search(request, _criteria(request))


async def search_system_post(request: Request) -> Response:
    form = await form_parameters(request)
    return await _search(request, [*_criteria(request), *((k, v) for k, v in form if k not in GENERAL)])


async def _search(request: Request, params: list[tuple[str, str]]) -> Response:
    ctx = context(request)
    base = base_url(request)
    lenient = "handling=lenient" in request.headers.get("prefer", "")
    parsed = await search_interaction.parse_system_request(ctx, params, base=base, lenient=lenient)
    page = await search_interaction.search(ctx, parsed)
    return fhir_response(request, searchset(base, "", parsed, page))


routes = [
    Route("/", search_system, methods=["GET"], name="search_system"),
    Route("/_search", search_system_post, methods=["POST"], name="search_system_post"),
]

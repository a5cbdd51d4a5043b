"""Request bodies: size-limited (413) before parsing, then strict FHIR JSON."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from ..errors import bad_request, too_large, unsupported_media_type
from ..fhirjson import loads
from .negotiation import check_body_type


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(f"Request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"Request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_resource(request: Request) -> object:
    check_body_type(request)
    settings = request.app.state.settings
    body = await read_limited(request, settings.max_body_bytes)
    if not body.strip():
        raise bad_request("The request body is empty: a FHIR resource is expected")
    return loads(body, max_depth=settings.max_json_depth)


async def form_parameters(request: Request) -> list[tuple[str, str]]:
    """The parameters of a ``POST _search``: an ``application/x-www-form-urlencoded`` body (415 otherwise)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise unsupported_media_type("POST _search takes application/x-www-form-urlencoded parameters")
    body = await read_limited(request, request.app.state.settings.max_body_bytes)
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise bad_request("The _search form is not valid UTF-8") from None

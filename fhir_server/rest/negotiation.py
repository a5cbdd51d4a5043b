"""Content negotiation (http://hl7.org/fhir/R4/http.html#mime-type): ``_format`` wins over ``Accept``.

JSON only for now: an XML request gets 406 (response) or 415 (request body), never JSON by surprise.
"""

from __future__ import annotations

from functools import lru_cache

from starlette.requests import Request

from ..errors import not_acceptable, unsupported_media_type

FHIR_JSON = "application/fhir+json"
PLAIN_JSON = "application/json"
_JSON_FORMATS = {
    "json": FHIR_JSON,
    "application/fhir+json": FHIR_JSON,
    "application/json+fhir": FHIR_JSON,
    "application/json": PLAIN_JSON,
    "text/json": PLAIN_JSON,
}
_BODY_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}


def _mime(value: str) -> str:
    # An unescaped '+' in a query string arrives as a space ("application/fhir json").
    return value.split(";", 1)[0].strip().lower().replace(" ", "+")


@lru_cache(maxsize=256)
def _from_accept(accept: str) -> str | None:
    ranges = []
    for position, part in enumerate(accept.split(",")):
        pieces = part.split(";")
        mime = _mime(pieces[0])
        q = 1.0
        for param in pieces[1:]:
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            ranges.append((-q, position, mime))
    for _, _, mime in sorted(ranges):
        if mime in _JSON_FORMATS and "/" in mime:
            return _JSON_FORMATS[mime]
        if mime in ("*/*", "application/*"):
            return FHIR_JSON
    return None


def response_media_type(request: Request) -> str:
    fmt = request.query_params.get("_format")
    if fmt:
        found = _JSON_FORMATS.get(_mime(fmt))
        if found is None:
            raise not_acceptable(f"_format={fmt!r} is not supported: this server speaks FHIR JSON")
        return found
    accept = request.headers.get("accept")
    if not accept or accept == FHIR_JSON or accept == "*/*":
        return FHIR_JSON
    found = _from_accept(accept)
    if found is None:
        raise not_acceptable(f"Accept {accept!r} lists no supported format: use application/fhir+json")
    return found


def is_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty") == "true"


def check_body_type(request: Request) -> None:
    """A body must be FHIR JSON in UTF-8; no Content-Type is taken as FHIR JSON."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    if _mime(content_type) not in _BODY_TYPES:
        raise unsupported_media_type(f"Content-Type {content_type!r} is not supported: send application/fhir+json")
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value.strip('"').lower() not in ("utf-8", "utf8"):
            raise unsupported_media_type(f"charset {value!r} is not supported: FHIR JSON is UTF-8")

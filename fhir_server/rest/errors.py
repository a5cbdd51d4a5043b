"""Errors → OperationOutcome with the right status, for everything a request can raise."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import FhirError, Issue, operation_outcome
from ..fhirjson import dumps
from ..store import QueryTooCostly, StoreUnavailable

log = logging.getLogger("fhir_server")

_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Response:
    return Response(
        dumps(operation_outcome(issues)),
        status_code=status,
        headers=headers,
        media_type="application/fhir+json; charset=utf-8",
    )


async def _fhir_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    return outcome_response(exc.status, exc.issues, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "processing")
    if exc.status_code == 404:
        message = f"No FHIR endpoint at {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not supported on {request.url.path}"
    else:
        message = str(exc.detail)
    return outcome_response(exc.status_code, [Issue(code, message)], dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> Response:
    return outcome_response(400, [Issue("invalid", "Malformed request")])


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.error("store unavailable: %s", exc)
    return outcome_response(503, [Issue("transient", "The database is unavailable, retry later")])


async def _too_costly(request: Request, exc: Exception) -> Response:
    return outcome_response(400, [Issue("too-costly", str(exc))])


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (no request body: it may hold health data); the client gets no detail.
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return outcome_response(500, [Issue("exception", "Internal server error")])


def install(app: FastAPI) -> None:
    app.add_exception_handler(FhirError, _fhir_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreUnavailable, _unavailable)
    app.add_exception_handler(QueryTooCostly, _too_costly)
    app.add_exception_handler(Exception, _unexpected)

"""HTTP endpoints of the authorization server (Starlette routes; ``auth_routes()`` lists them).

Handlers read the request (bounded), then run the synchronous OAuth machinery and auth state in a worker
thread. OAuth errors are RFC 6749 JSON (``error``, ``error_description``); none is a 500.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..audit.tokens import trace_token_response
from . import i18n, interaction
from .browser import COOKIE, cookie_options, end_session, load_session
from .clients import PUBLIC
from .discovery import openid_configuration, smart_configuration
from .oauth import JSON_HEADERS, SmartRequest
from .pages import SECURITY_HEADERS, Form, logout_page, message_page
from .registration import REGISTRATION_SCOPE, register
from .server import LAUNCH_LIFETIME, AuthServer
from .tokens import InvalidToken

log = logging.getLogger("fhir_server.auth")

MAX_FORM_BYTES = 64 * 1024
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# Browser apps call these from their own origin: they carry no cookie, so any origin may.
_CORS = {"Access-Control-Allow-Origin": "*"}
_CORS_PREFLIGHT = {
    **_CORS,
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "86400",
}


class FormError(Exception):
    pass


def _auth(request: Request) -> AuthServer:
    return request.app.state.auth


def issuer(request: Request) -> str:
    """The public base URL (FHIR base, issuer, audience): configured, else the one the request used."""
    configured = request.app.state.settings.base_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


async def read_form(request: Request) -> dict[str, list[str]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise FormError("The body must be application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError("The request body is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise FormError("The body is not valid UTF-8 form data") from None
    form: dict[str, list[str]] = {}
    for key, value in pairs:
        form.setdefault(key, []).append(value)
    return form


def _query(request: Request) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        query.setdefault(key, []).append(value)
    return query


def oauth_error(error: str, description: str, status: int = 400, headers: dict | None = None) -> JSONResponse:
    body = {"error": error, "error_description": description}
    return JSONResponse(body, status_code=status, headers={**dict(JSON_HEADERS), **_CORS, **(headers or {})})


def _tuple_response(result: tuple[int, object, list[tuple[str, str]]]) -> Response:
    status, body, headers = result
    merged = {**dict(headers), **_CORS}
    if isinstance(body, dict):
        return JSONResponse(body, status_code=status, headers=merged)
    return Response(body or b"", status_code=status, headers=merged)


def _lang(request: Request, form: dict[str, list[str]] | None = None) -> str:
    from_form = (form or {}).get("lang", [None])[0]
    return i18n.choose(
        from_form or request.query_params.get("lang"),
        request.query_params.get("ui_locales") or (form or {}).get("ui_locales", [None])[0],
        request.headers.get("accept-language"),
    )


def _browser(request: Request, lang: str, form: dict[str, list[str]] | None = None) -> interaction.Browser:
    ip = request.client.host if request.client else None
    chosen = bool(request.query_params.get("lang") or (form or {}).get("lang"))
    return interaction.Browser(issuer(request), request.cookies.get(COOKIE), ip, lang, chosen)


def _html(request: Request, outcome: interaction.Outcome) -> Response:
    headers = {**SECURITY_HEADERS, **outcome.headers}
    if outcome.location is not None:
        response: Response = RedirectResponse(outcome.location, status_code=outcome.status, headers=headers)
    else:
        response = HTMLResponse(outcome.html or "", status_code=outcome.status, headers=headers)
    options = cookie_options(issuer(request), request.scope.get("root_path", ""))
    if outcome.set_cookie:
        response.set_cookie(value=outcome.set_cookie, **options)
    elif outcome.clear_cookie:
        response.delete_cookie(options["key"], path=options["path"], secure=options["secure"], httponly=True)
    return response


# --- discovery -------------------------------------------------------------------------------------
async def smart_config(request: Request) -> Response:
    return JSONResponse(smart_configuration(issuer(request)), headers=_CORS)


async def openid_config(request: Request) -> Response:
    return JSONResponse(openid_configuration(issuer(request)), headers=_CORS)


async def jwks(request: Request) -> Response:
    headers = {**_CORS, "Cache-Control": "public, max-age=60"}
    return JSONResponse(_auth(request).keys.jwks(), headers=headers)


# --- authorization endpoint and its pages --------------------------------------------------------
async def _form_or_error_page(request: Request) -> dict[str, list[str]] | Response:
    """The posted form, or the 400 page saying why it could not be read."""
    try:
        return await read_form(request)
    except FormError as exc:
        lang = _lang(request)
        return HTMLResponse(message_page(lang, i18n.text(lang, "error_title"), str(exc)), 400)


async def authorize(request: Request) -> Response:
    form: dict[str, list[str]] = {}
    if request.method == "POST":  # SMART authorize-post: the same parameters as a form
        form_or_page = await _form_or_error_page(request)
        if isinstance(form_or_page, Response):
            return form_or_page
        form = form_or_page
    lang = _lang(request, form)
    base = issuer(request)
    oauth_request = SmartRequest(request.method, str(request.url), request.headers, _query(request), form, base)
    outcome = await run_in_threadpool(interaction.start, _auth(request), oauth_request, _browser(request, lang))
    return _html(request, outcome)


async def interaction_page(request: Request) -> Response:
    auth = _auth(request)
    if request.method == "GET":
        lang = _lang(request)
        outcome = await run_in_threadpool(
            interaction.show, auth, request.query_params.get("tx"), _browser(request, lang)
        )
        return _html(request, outcome)
    form = await _form_or_error_page(request)
    if isinstance(form, Response):
        return form
    lang = _lang(request, form)
    exists = await _patient_exists(request, form)
    outcome = await run_in_threadpool(
        interaction.submit, auth, form, _browser(request, lang, form), lambda pid: pid in exists
    )
    return _html(request, outcome)


async def _patient_exists(request: Request, form: dict[str, list[str]]) -> set[str]:
    """The picked Patient ids that exist in the store (checked here: the store is async)."""
    if form.get("step", [None])[0] != "patient":
        return set()
    picked = {p.strip() for p in form.get("patient", []) if _ID.match(p.strip())}
    store = request.app.state.context.store
    found = set()
    for pid in picked:
        version = await store.read_current("Patient", pid)
        if version is not None and version.body is not None:
            found.add(pid)
    return found


async def logout(request: Request) -> Response:
    auth = _auth(request)
    lang = _lang(request)
    session = await run_in_threadpool(load_session, auth.state, request.cookies.get(COOKIE))
    if request.method == "GET":
        if session is None:
            outcome = interaction.Outcome(
                200, html=message_page(lang, i18n.text(lang, "logout_title"), i18n.text(lang, "logged_out"))
            )
            return _html(request, outcome)
        form = Form(f"{issuer(request)}/auth/logout", {"csrf": session.csrf, "lang": lang})
        return _html(request, interaction.Outcome(200, html=logout_page(lang, form)))
    try:
        form_data = await read_form(request)
    except FormError:
        form_data = {}
    if session is not None and session.csrf_ok(form_data.get("csrf", [None])[0]):
        await run_in_threadpool(end_session, auth.state, session)
        log.info("user signed out")
    title, message = i18n.text(lang, "logout_title"), i18n.text(lang, "logged_out")
    return _html(request, interaction.Outcome(200, html=message_page(lang, title, message), clear_cookie=True))


# --- token, introspection, revocation (RFC 6749, 7662, 7009) -----------------------------------------
def _oauth_endpoint(
    run: Callable[[AuthServer, SmartRequest], object], traced: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """``traced``: every answer is an AuditEvent committed before it is sent (the token endpoint)."""

    async def endpoint(request: Request) -> Response:
        try:
            form = await read_form(request)
        except FormError as exc:
            return oauth_error("invalid_request", str(exc))
        repeated = sorted(k for k, v in form.items() if len(v) > 1)
        if repeated:  # RFC 6749 §3.2: parameters MUST NOT be included more than once
            return oauth_error("invalid_request", f"Repeated parameter: {', '.join(repeated)}")
        auth = _auth(request)
        oauth_request = SmartRequest("POST", str(request.url), request.headers, {}, form, issuer(request))
        result = await run_in_threadpool(run, auth, oauth_request)
        if traced:
            status, body, _ = result  # type: ignore[misc]
            client = request.client.host if request.client else None
            await trace_token_response(
                getattr(request.app.state, "audit", None), issuer(request), form, status, body, client
            )
        return _tuple_response(result)  # type: ignore[arg-type]

    return endpoint


token = _oauth_endpoint(lambda auth, req: auth.oauth.create_token_response(req), traced=True)
introspect = _oauth_endpoint(lambda auth, req: auth.oauth.create_endpoint_response("introspection", req))
revoke = _oauth_endpoint(lambda auth, req: auth.oauth.create_endpoint_response("revocation", req))


# --- bearer-protected: userinfo, EHR launch --------------------------------------------------------
def _bearer_error(status: int, error: str, description: str) -> JSONResponse:
    challenge = f'Bearer error="{error}", error_description="{description}"'
    return oauth_error(error, description, status, {"WWW-Authenticate": challenge})


async def _bearer_claims(request: Request) -> dict | JSONResponse:
    auth = _auth(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return oauth_error("invalid_request", "Bearer token required", 401, {"WWW-Authenticate": "Bearer"})
    try:
        claims = auth.verify_access_token(token.strip(), issuer(request))
    except InvalidToken as exc:
        return _bearer_error(401, "invalid_token", exc.description)
    if await run_in_threadpool(auth.is_revoked, claims["jti"]):
        return _bearer_error(401, "invalid_token", "The token was revoked")
    return claims


async def userinfo(request: Request) -> Response:
    claims = await _bearer_claims(request)
    if isinstance(claims, Response):
        return claims
    if "openid" not in claims["scope"].split():
        return _bearer_error(403, "insufficient_scope", "The token was not granted the openid scope")
    body = {"sub": claims["sub"]}
    if claims.get("fhirUser"):
        body["fhirUser"] = f"{issuer(request)}/{claims['fhirUser']}"
    user = await run_in_threadpool(_auth(request).user, claims["sub"])
    if user is not None and user.name:
        body["name"] = user.name
    return JSONResponse(body, headers={**_CORS, "Cache-Control": "no-store"})


async def launch(request: Request) -> Response:
    """Create an EHR launch context: the EHR (a confidential or backend client) posts patient/encounter."""
    claims = await _bearer_claims(request)
    if isinstance(claims, Response):
        return claims
    auth = _auth(request)
    client = await run_in_threadpool(auth.client, claims["client_id"])
    if client is None or client.type == PUBLIC:
        return _bearer_error(403, "insufficient_scope", "Only confidential or backend clients may create launches")
    try:
        values = await _launch_values(request)
    except FormError as exc:
        return oauth_error("invalid_request", str(exc))
    launch_id = await run_in_threadpool(
        auth.create_launch, values.get("patient"), values.get("encounter"), values.get("user")
    )
    log.info("EHR launch context created")
    return JSONResponse({"launch": launch_id, "expires_in": LAUNCH_LIFETIME}, status_code=201)


async def register_client(request: Request) -> Response:
    """RFC 7591 dynamic registration, behind an initial access token (see auth/registration.py)."""
    claims = await _bearer_claims(request)
    if isinstance(claims, Response):
        return claims
    if REGISTRATION_SCOPE not in claims["scope"].split():
        return _bearer_error(403, "insufficient_scope", f"Registration needs the {REGISTRATION_SCOPE} scope")
    if not request.headers.get("content-type", "").startswith("application/json"):
        return oauth_error("invalid_client_metadata", "Client metadata are sent as application/json")
    body = await request.body()
    try:
        metadata = json.loads(body) if len(body) <= MAX_FORM_BYTES else None
        answer = await run_in_threadpool(register, _auth(request).add_client, metadata)
    except ValueError as exc:  # malformed JSON, or a RegistrationError
        return oauth_error(getattr(exc, "error", "invalid_client_metadata"), str(exc) or "Malformed JSON")
    log.info("client registered dynamically")
    return JSONResponse(answer, status_code=201, headers={"Cache-Control": "no-store"})


async def _launch_values(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await request.body()
        try:
            data = json.loads(body[:MAX_FORM_BYTES]) if body else {}
        except ValueError:
            raise FormError("The body is not valid JSON") from None
        if not isinstance(data, dict):
            raise FormError("The body must be a JSON object")
    else:
        data = {k: v[0] for k, v in (await read_form(request)).items()}
    values = {k: data[k] for k in ("patient", "encounter", "user") if data.get(k) is not None}
    for name, value in values.items():
        if not isinstance(value, str) or not (_ID.match(value) or (name == "user" and 0 < len(value) <= 200)):
            raise FormError(f"'{name}' must be a FHIR id" if name != "user" else "'user' must be a username")
    return values


async def preflight(request: Request) -> Response:
    return Response(status_code=204, headers=_CORS_PREFLIGHT)


def auth_routes() -> list[BaseRoute]:
    """The routes to mount at the root of the FHIR app (before the FHIR routes)."""
    cors = ["/.well-known/smart-configuration", "/.well-known/openid-configuration", "/auth/jwks", "/auth/token"]
    cors += ["/auth/introspect", "/auth/revoke", "/auth/userinfo"]
    return [
        Route("/.well-known/smart-configuration", smart_config, methods=["GET"]),
        Route("/.well-known/openid-configuration", openid_config, methods=["GET"]),
        Route("/auth/jwks", jwks, methods=["GET"]),
        Route("/auth/authorize", authorize, methods=["GET", "POST"]),
        Route("/auth/interaction", interaction_page, methods=["GET", "POST"]),
        Route("/auth/logout", logout, methods=["GET", "POST"]),
        Route("/auth/token", token, methods=["POST"]),
        Route("/auth/introspect", introspect, methods=["POST"]),
        Route("/auth/revoke", revoke, methods=["POST"]),
        Route("/auth/userinfo", userinfo, methods=["GET", "POST"]),
        Route("/auth/launch", launch, methods=["POST"]),
        Route("/auth/register", register_client, methods=["POST"]),
        *(Route(path, preflight, methods=["OPTIONS"], name=f"preflight:{path}") for path in cors),
    ]

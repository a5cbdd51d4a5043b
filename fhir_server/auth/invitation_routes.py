"""An invitation to become a representative (aidant, second legal representative), answered by the invitee
before they have a token (public, under ``/auth/space/invitations``; fhir_server.space.delegation).

* ``GET /auth/space/invitations?token=…``: the page the email links to (what is asked, two forms);
* ``POST /auth/space/invitations/accept``: ``token``, ``username``, ``password``: an existing account's
  credentials, or a new account created with them (its fhirUser is the RelatedPerson);
* ``POST /auth/space/invitations/decline``: ``token`` and an optional ``reason``.

Bodies are forms (the page) or JSON; answers are a page, or JSON. An unknown, expired, used or withdrawn
invitation always gets the same 400. Password checks are throttled like the login (``LoginThrottle``).
"""

from __future__ import annotations

import json
import logging
import time
from html import escape

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..space import delegation
from ..space import representatives as rep
from ..space.delegation import InvalidInvitation, Services
from .pages import SECURITY_HEADERS, Form, layout, message_page
from .passwords import verify_password
from .routes import FormError, issuer, read_form
from .server import AuthServer
from .throttle import WINDOW
from .users import User, UserError

log = logging.getLogger("fhir_server.auth")

PATH = delegation.ACCEPT_PATH
MAX_JSON_BYTES = 16 * 1024
CLAIM_SECONDS = 3600  # a username being created is held this long against a concurrent creation
INVALID = (
    "Cette invitation est inconnue, expirée ou déjà traitée (this invitation is unknown, expired or already answered)"
)


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def services(request: Request) -> Services:
    state = request.app.state
    return Services(state.context.store, state.auth.state, getattr(state, "audit", None), issuer(request),
                    state.settings.invitation_days)  # fmt: skip


async def _values(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        body = await request.body()
        data = json.loads(body) if 0 < len(body) <= MAX_JSON_BYTES else None
        if not isinstance(data, dict):
            raise FormError("The body must be a JSON object")
        return {k: v for k, v in data.items() if isinstance(v, str)}
    return {k: v[0] for k, v in (await read_form(request)).items() if v}


def _answer(request: Request, status: int, body: dict, title: str, message: str) -> Response:
    if request.headers.get("content-type", "").startswith("application/json"):
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})
    return HTMLResponse(message_page("fr", title, message), status_code=status, headers=SECURITY_HEADERS)


def _bad_request(request: Request, message: str) -> Response:
    return _answer(request, 400, {"error": "invalid_request", "error_description": message}, "Invitation", message)


def _invalid(request: Request) -> Response:
    body = {"error": "invalid_invitation", "error_description": INVALID}
    return _answer(request, 400, body, "Invitation", INVALID)


# --- the page ------------------------------------------------------------------------------------------------


async def page(request: Request) -> Response:
    token = request.query_params.get("token", "")
    try:
        held = await delegation.pending(services(request), token)
    except InvalidInvitation:
        return HTMLResponse(message_page("fr", "Invitation", INVALID), 400, headers=SECURITY_HEADERS)
    base = issuer(request)
    role, rights = delegation.ROLE_NAMES[held.kind], delegation.RIGHT_NAMES[held.rights]
    until = held.expires.date().isoformat() if held.expires else ""
    accept = Form(f"{base}{PATH}/accept", {"token": token}).open()
    decline = Form(f"{base}{PATH}/decline", {"token": token}).open()
    body = (
        f"<p>Vous êtes invité(e) à devenir {escape(role)} : vous pourrez {escape(rights)} "
        f"l'espace santé de la personne qui vous invite (jusqu'au {escape(until)} pour répondre).</p>"
        f"{accept}<fieldset><legend>Accepter</legend><p>Votre compte, ou le compte à créer :</p>"
        '<label for="username">Identifiant</label><input type="text" id="username" name="username" '
        'autocomplete="username" autocapitalize="none" spellcheck="false" required>'
        '<label for="password">Mot de passe (8 caractères au moins)</label>'
        '<input type="password" id="password" name="password" autocomplete="current-password" required>'
        '<button type="submit">Accepter</button></fieldset></form>'
        f'{decline}<label for="reason">Motif (facultatif)</label><input type="text" id="reason" name="reason">'
        '<button type="submit">Refuser</button></form>'
    )
    return HTMLResponse(layout("fr", "Invitation Mon espace santé", body), headers=SECURITY_HEADERS)


# --- accept, decline ------------------------------------------------------------------------------------------


async def accept(request: Request) -> Response:
    try:
        values = await _values(request)
    except (FormError, ValueError) as exc:
        return _bad_request(request, str(exc))
    token, username, password = values.get("token", ""), values.get("username", "").strip(), values.get("password", "")
    svc = services(request)
    ip = request.client.host if request.client else None
    try:
        held = await delegation.pending(svc, token)
        user = await run_in_threadpool(_account, request.app.state.auth, username, password, held.id, ip)
        await delegation.consume(svc, token)
        linked = await delegation.accept(svc, held, user.username, user.fhir_user or f"RelatedPerson/{held.id}")
    except InvalidInvitation:
        return _invalid(request)
    except Refused as exc:
        body = {"error": "access_denied", "error_description": exc.message}
        return _answer(request, exc.status, body, "Invitation", exc.message)
    log.info("invitation accepted")
    body = {"status": rep.ACCEPTED, "relatedPerson": f"RelatedPerson/{linked['id']}", "username": user.username}
    return _answer(request, 200, body, "Invitation acceptée", "Invitation acceptée : connectez-vous avec votre compte.")


def _account(auth: AuthServer, username: str, password: str, rp_id: str, ip: str | None) -> User:
    """An existing account (its password checked, throttled) or a new one whose fhirUser is the RelatedPerson."""
    throttle = auth.throttle
    if not username or throttle.locked(username, ip):
        raise Refused(429 if username else 400, f"Trop d'essais : réessayez dans {WINDOW // 60} minutes"
                      if username else "username et password sont requis")  # fmt: skip
    existing = auth.user(username)
    if existing is not None:
        if not verify_password(password, existing.password):
            throttle.failure(username, ip)
            raise Refused(401, "Identifiant ou mot de passe incorrect (wrong username or password)")
        if existing.managed_patients is None:  # a professional's account does not act for a person
            raise Refused(400, "Ce compte ne peut pas représenter une personne (this account cannot act for a person)")
        throttle.success(username)
        return existing
    now = time.time()
    # put_user replaces: two concurrent creations of one username must not both succeed
    if auth.state.increment(f"account-claim:{username}", now + CLAIM_SECONDS, now) != 1:
        raise Refused(409, "Cet identifiant est déjà pris (this username is taken)")
    try:
        return auth.add_user(username, password, fhir_user=f"RelatedPerson/{rp_id}")
    except UserError as exc:
        auth.state.reset(f"account-claim:{username}")
        raise Refused(400, str(exc)) from None


async def decline(request: Request) -> Response:
    try:
        values = await _values(request)
    except (FormError, ValueError) as exc:
        return _bad_request(request, str(exc))
    svc = services(request)
    try:
        held = await delegation.pending(svc, values.get("token", ""))
        await delegation.consume(svc, values.get("token", ""))
        await delegation.decline(svc, held, (values.get("reason") or "").strip()[:500] or None)
    except InvalidInvitation:
        return _invalid(request)
    log.info("invitation declined")
    return _answer(request, 200, {"status": rep.DECLINED}, "Invitation refusée", "Invitation refusée.")


def invitation_routes() -> list[BaseRoute]:
    return [
        Route(PATH, page, methods=["GET"]),
        Route(f"{PATH}/accept", accept, methods=["POST"]),
        Route(f"{PATH}/decline", decline, methods=["POST"]),
    ]

"""The interactive part of the authorization endpoint: login → TOTP → patient picker → consent.

``/auth/authorize`` validates the request (authlib + SMART rules) and parks it as a *pending
authorization* bound to the browser session, then sends the browser to ``/auth/interaction?tx=…``.
That page shows whichever step is due; each form posts back there (POST/redirect/GET). Consent issues
the code through authlib and redirects to the app.

Synchronous (it works the auth state); the routes run it in a worker thread.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import AccessDeniedError
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError

from . import scopes as smart
from . import totp
from .browser import BrowserSession, end_session, load_session, new_session, save_session
from .clients import Client
from .i18n import describe_scope, text
from .oauth import SmartRequest, new_family
from .pages import Form, consent_page, login_page, message_page, picker_page, totp_page
from .passwords import verify_password
from .server import AuthServer
from .state import LAUNCH, PENDING
from .subject import Subject
from .throttle import WINDOW
from .users import User

log = logging.getLogger("fhir_server.auth")

PENDING_LIFETIME = 600  # ten minutes to sign in and consent
_PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass
class Outcome:
    """What the route answers: a page or a redirect, and the session cookie to set or clear."""

    status: int
    html: str | None = None
    location: str | None = None
    set_cookie: str | None = None
    clear_cookie: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Browser:
    """What the interaction needs from the HTTP request."""

    base: str
    cookie: str | None
    ip: str | None
    lang: str
    lang_chosen: bool = False  # lang= in this request; otherwise the pending request's language wins


def _interaction_url(base: str, tx: str, lang: str | None = None) -> str:
    query = {"tx": tx, **({"lang": lang} if lang else {})}
    return f"{base}/auth/interaction?{urlencode(query)}"


def error_outcome(error: OAuth2Error, lang: str) -> Outcome:
    """Back to the app with ``error`` (+ ``state``) when client and redirect_uri are valid; else a page."""
    if error.redirect_uri:
        _, _, headers = error()
        return Outcome(302, location=dict(headers)["Location"])
    detail = f"{error.error}: {error.description}" if error.description else error.error
    return Outcome(400, html=message_page(lang, text(lang, "error_title"), error.error, detail))


def _expired(lang: str) -> Outcome:
    return Outcome(400, html=message_page(lang, text(lang, "error_title"), text(lang, "expired")))


# --- /auth/authorize -----------------------------------------------------------------------------
def start(auth: AuthServer, request: SmartRequest, browser: Browser) -> Outcome:
    try:
        grant = auth.oauth.get_consent_grant(request, end_user=None)
    except OAuth2Error as error:
        return error_outcome(error, browser.lang)
    data = request.payload.data
    state = auth.state
    now = time.time()
    session = load_session(state, browser.cookie, now)
    prompts = (data.get("prompt") or "").split()
    user = auth.user(session.username) if session and session.username else None
    if "none" in prompts:  # no page may be shown: we never remember consents, so it can only fail
        error = ConsentRequiredError() if user else LoginRequiredError()
        error.redirect_uri, error.state = grant.redirect_uri, data.get("state")
        return error_outcome(error, browser.lang)
    if session is None or "login" in prompts:
        session = new_session(now)
        save_session(state, session)
    granted = smart.split(request.scope)
    launch = None
    if data.get("launch") and smart.LAUNCH in granted:
        launch = state.get_temp(LAUNCH, data["launch"], now)
    pending = {
        "session": session.key,
        "params": {k: v for k, v in request.payload.datalist.items()},
        "client_id": request.client.client_id,
        "redirect_uri": grant.redirect_uri,
        "scopes": granted,
        "launch": launch,
        "patient": (launch or {}).get("patient"),
        "lang": browser.lang,
    }
    tx = secrets.token_urlsafe(16)
    state.put_temp(PENDING, tx, pending, now + PENDING_LIFETIME)
    return Outcome(303, location=_interaction_url(browser.base, tx), set_cookie=session.sid if session.is_new else None)


# --- /auth/interaction ------------------------------------------------------------------------------
@dataclass
class _Context:
    auth: AuthServer
    browser: Browser
    tx: str
    pending: dict
    session: BrowserSession
    client: Client

    @property
    def lang(self) -> str:
        return self.browser.lang

    def form(self, step: str) -> Form:
        hidden = {"tx": self.tx, "csrf": self.session.csrf, "step": step, "lang": self.lang}
        return Form(f"{self.browser.base}/auth/interaction", hidden)

    def save_pending(self) -> None:
        self.auth.state.put_temp(PENDING, self.tx, self.pending, time.time() + PENDING_LIFETIME)

    def again(self, cookie: str | None = None) -> Outcome:
        return Outcome(303, location=_interaction_url(self.browser.base, self.tx, self.lang), set_cookie=cookie)


def _load(auth: AuthServer, tx: str | None, browser: Browser) -> _Context | Outcome:
    if not tx or len(tx) > 64:
        return _expired(browser.lang)
    now = time.time()
    pending = auth.state.get_temp(PENDING, tx, now)
    session = load_session(auth.state, browser.cookie, now)
    # The pending request belongs to the browser that started it: a leaked tx is useless elsewhere.
    if pending is None or session is None or session.key != pending["session"]:
        return _expired(browser.lang)
    client = auth.client(pending["client_id"])
    if client is None:
        return _expired(browser.lang)
    if not browser.lang_chosen:
        browser.lang = pending.get("lang", browser.lang)
    return _Context(auth, browser, tx, pending, session, client)


def _user(ctx: _Context) -> User | None:
    return ctx.auth.user(ctx.session.username) if ctx.session.username else None


def _managed(ctx: _Context, user: User) -> list[str] | None:
    """The records the user may pick now: their own, the operator's list, and those RelatedPersons valid now
    give them (the token issued is computed the same way)."""
    return ctx.auth.issuer.managed_patients(user.username, user.fhir_user, user.managed_patients)


def _needs_patient(ctx: _Context) -> bool:
    wanted = smart.LAUNCH_PATIENT in ctx.pending["scopes"] or any(
        (c := smart.parse_clinical(s)) is not None and c.context == "patient" for s in ctx.pending["scopes"]
    )
    return wanted and not ctx.pending.get("patient")


def _step(ctx: _Context, user: User | None) -> str:
    if user is None:
        return "totp" if ctx.session.doc.get("pending_user") else "login"
    if _needs_patient(ctx):
        managed = _managed(ctx, user)
        if managed is not None and len(managed) == 1:  # nothing to choose
            ctx.pending["patient"] = managed[0]
            ctx.save_pending()
            return "consent"
        return "patient"
    return "consent"


def _launch_refused(ctx: _Context, user: User | None) -> Outcome | None:
    """An EHR launch context is for the user it names (if any); a patient or guardian may only be
    launched into a record they manage. Otherwise a leaked launch id would open someone's record."""
    launch = ctx.pending.get("launch")
    if not launch or user is None:
        return None
    bound = launch.get("user")
    managed = _managed(ctx, user)
    patient = launch.get("patient")
    if (bound and bound != user.username) or (patient and managed is not None and patient not in managed):
        ctx.auth.state.delete_temp(PENDING, ctx.tx)
        return Outcome(
            403, html=message_page(ctx.lang, text(ctx.lang, "error_title"), text(ctx.lang, "picker_unknown"))
        )
    return None


def show(auth: AuthServer, tx: str | None, browser: Browser) -> Outcome:
    ctx = _load(auth, tx, browser)
    if isinstance(ctx, Outcome):
        return ctx
    user = _user(ctx)
    return _launch_refused(ctx, user) or _render(ctx, _step(ctx, user))


def _render(ctx: _Context, step: str, error: str | None = None, status: int = 200, **extra: str) -> Outcome:
    lang, name = ctx.lang, ctx.client.display_name
    if step == "login":
        html = login_page(lang, ctx.form(step), name, error=error, username=extra.get("username", ""))
    elif step == "totp":
        html = totp_page(lang, ctx.form(step), error=error)
    elif step == "patient":
        html = picker_page(lang, ctx.form(step), name, _patient_options(ctx), error=error)
    else:
        items = [(s, describe_scope(s, lang), s in smart.MANDATORY) for s in ctx.pending["scopes"]]
        html = consent_page(lang, ctx.form(step), name, items, ctx.pending.get("patient"))
    return Outcome(status, html=html)


def _patient_options(ctx: _Context) -> list[tuple[str, str]] | None:
    user = _user(ctx)
    managed = _managed(ctx, user) if user else None
    if managed is None:
        return None
    own = user.own_patient if user else None
    return [
        (pid, text(ctx.lang, "picker_self") if pid == own else text(ctx.lang, "picker_other", id=pid))
        for pid in managed
    ]


def submit(
    auth: AuthServer, form: Mapping[str, list[str]], browser: Browser, patient_exists: Callable[[str], bool]
) -> Outcome:
    first = {k: v[0] for k, v in form.items() if v}
    ctx = _load(auth, first.get("tx"), browser)
    if isinstance(ctx, Outcome):
        return ctx
    if not ctx.session.csrf_ok(first.get("csrf")):
        return Outcome(403, html=message_page(ctx.lang, text(ctx.lang, "error_title"), text(ctx.lang, "csrf")))
    user = _user(ctx)
    refused = _launch_refused(ctx, user)
    if refused is not None:
        return refused
    step = _step(ctx, user)
    if first.get("step") != step:  # a stale form (back button, second tab): show what is due now
        return ctx.again()
    if step == "login":
        return _login(ctx, first.get("username", "").strip(), first.get("password", ""))
    if step == "totp":
        return _totp(ctx, first.get("code", ""))
    if step == "patient":
        return _choose_patient(ctx, user, first.get("patient", "").strip(), patient_exists)
    return _consent(ctx, user, first.get("action"), form.get("scope", []))


def _throttled(ctx: _Context, step: str) -> Outcome:
    message = text(ctx.lang, "throttled", minutes=str(WINDOW // 60))
    outcome = _render(ctx, step, message, 429)
    outcome.headers["Retry-After"] = str(WINDOW)
    return outcome


def _login(ctx: _Context, username: str, password: str) -> Outcome:
    throttle = ctx.auth.throttle
    if throttle.locked(username, ctx.browser.ip):
        return _throttled(ctx, "login")
    user = ctx.auth.user(username) if username else None
    if not verify_password(password, user.password if user else None):
        throttle.failure(username, ctx.browser.ip)
        log.info("sign-in refused")  # no username: it may be a password typed in the wrong field
        return _render(ctx, "login", text(ctx.lang, "bad_credentials"), 401, username=username)
    if user.totp_secret:
        ctx.session.doc["pending_user"] = user.username
        save_session(ctx.auth.state, ctx.session)
        return ctx.again()
    return _signed_in(ctx, user, ("pwd",))


def _totp(ctx: _Context, code: str) -> Outcome:
    user = ctx.auth.user(ctx.session.doc["pending_user"])
    if user is None or not user.totp_secret:
        return _expired(ctx.lang)
    throttle = ctx.auth.throttle
    if throttle.locked(user.username, ctx.browser.ip):
        return _throttled(ctx, "totp")
    now = time.time()
    step = totp.matching_step(user.totp_secret, code, now)
    # A code is good once: the counter of (user, step) must be new.
    replay_key = f"totp:{user.username}:{step}"
    if step is None or ctx.auth.state.increment(replay_key, now + 4 * totp.STEP, now) != 1:
        throttle.failure(user.username, ctx.browser.ip)
        return _render(ctx, "totp", text(ctx.lang, "bad_totp"), 401)
    return _signed_in(ctx, user, ("pwd", "otp"))


def _signed_in(ctx: _Context, user: User, amr: tuple[str, ...]) -> Outcome:
    ctx.auth.throttle.success(user.username)
    state = ctx.auth.state
    fresh = new_session(username=user.username, auth_time=int(time.time()), amr=list(amr))
    save_session(state, fresh)
    end_session(state, ctx.session)
    ctx.session = fresh
    ctx.pending["session"] = fresh.key
    ctx.save_pending()
    log.info("user signed in")
    return ctx.again(cookie=fresh.sid)


def _choose_patient(ctx: _Context, user: User, choice: str, patient_exists: Callable[[str], bool]) -> Outcome:
    managed = _managed(ctx, user)
    # A patient or guardian picks among their records; a practitioner names any existing Patient.
    valid = choice in managed if managed is not None else bool(_PATIENT_ID.match(choice)) and patient_exists(choice)
    if not valid:
        return _render(ctx, "patient", text(ctx.lang, "picker_unknown"), 400)
    ctx.pending["patient"] = choice
    ctx.save_pending()
    return ctx.again()


def _consent(ctx: _Context, user: User, action: str | None, ticked: list[str]) -> Outcome:
    auth, pending = ctx.auth, ctx.pending
    auth.state.delete_temp(PENDING, ctx.tx)
    params = pending["params"]
    request = SmartRequest("GET", f"{ctx.browser.base}/auth/authorize", {}, params, {}, ctx.browser.base)
    if action != "allow":
        state = (params.get("state") or [None])[0]
        return error_outcome(AccessDeniedError(redirect_uri=pending["redirect_uri"], state=state), ctx.lang)
    granted = [s for s in pending["scopes"] if s in smart.MANDATORY or s in ticked]
    launch = pending.get("launch") or {}
    subject = Subject(
        username=user.username,
        scope=smart.join(granted),
        family=new_family(),
        fhir_user=user.fhir_user,
        managed_patients=tuple(user.managed_patients) if user.managed_patients is not None else None,
        name=user.name,
        patient=pending.get("patient"),
        encounter=launch.get("encounter"),
        ehr_launch=bool(launch),
        session=ctx.session.key,
        auth_time=ctx.session.doc.get("auth_time"),
        amr=tuple(ctx.session.doc.get("amr") or ()),
    )
    try:
        grant = auth.oauth.get_consent_grant(request, end_user=subject)
    except OAuth2Error as error:
        return error_outcome(error, ctx.lang)
    status, _, headers = auth.oauth.create_authorization_response(request, grant_user=subject, grant=grant)
    location = dict(headers).get("Location")
    if location is None:
        return _expired(ctx.lang)
    log.info("authorization granted")
    return Outcome(status, location=location)

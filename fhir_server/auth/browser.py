"""Browser login sessions: a random id in an HttpOnly, SameSite=Lax cookie scoped to ``/auth``.

The session document (kept by the id's hash) holds the CSRF synchronizer token, who signed in (after
the password, and the TOTP code when the user has one), when, and how. A new id is issued at sign-in
(no session fixation). Sessions last ``SESSION_LIFETIME`` at most; ``online_access`` refresh tokens
end with them.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from .state import SESSION, AuthState, secret_id

COOKIE = "fhir_server_auth"
SESSION_LIFETIME = 8 * 3600  # a working day


@dataclass
class BrowserSession:
    sid: str  # the cookie value (never stored)
    doc: dict = field(default_factory=dict)
    is_new: bool = False

    @property
    def key(self) -> str:
        return secret_id(self.sid)

    @property
    def csrf(self) -> str:
        return self.doc["csrf"]

    @property
    def username(self) -> str | None:
        return self.doc.get("username")

    def csrf_ok(self, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(submitted.encode(), self.csrf.encode())


def new_session(now: float | None = None, **values: object) -> BrowserSession:
    now = time.time() if now is None else now
    doc = {"csrf": secrets.token_urlsafe(24), "created": now, "expires": now + SESSION_LIFETIME, **values}
    return BrowserSession(secrets.token_urlsafe(32), doc, is_new=True)


def load_session(state: AuthState, sid: str | None, now: float | None = None) -> BrowserSession | None:
    if not sid or len(sid) > 100:
        return None
    doc = state.get_temp(SESSION, secret_id(sid), time.time() if now is None else now)
    return BrowserSession(sid, doc) if doc is not None else None


def save_session(state: AuthState, session: BrowserSession) -> None:
    state.put_temp(SESSION, session.key, session.doc, session.doc["expires"])


def end_session(state: AuthState, session: BrowserSession) -> None:
    state.delete_temp(SESSION, session.key)


def cookie_options(base: str, root_path: str) -> dict:
    return {
        "key": COOKIE,
        "path": f"{root_path.rstrip('/')}/auth",
        "httponly": True,
        "samesite": "lax",  # sent on the top-level navigation from the app to /auth/authorize, not on cross-site posts
        "secure": base.startswith("https://"),
        "max_age": SESSION_LIFETIME,
    }

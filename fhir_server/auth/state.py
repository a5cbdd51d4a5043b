"""Auth state: everything the authorization server remembers, behind one small synchronous interface.

Two implementations share the semantics tested by ``tests/test_auth_state.py``: SQLite (``state_sqlite``,
the default, a file beside the SQLite store) and MongoDB (``state_mongo``, ``auth_*`` collections in the
store's database). The interface is synchronous on purpose: authlib's grant machinery is synchronous, so
route handlers run it (and this state) in a worker thread.

Secrets are never stored in clear: authorization codes, refresh tokens and session ids are kept by their
SHA-256 (``secret_id``), so a copy of the state does not let anyone redeem them.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlsplit

# Kinds of short-lived documents (``put_temp``/``take_temp``).
CODE = "code"  # authorization codes (single use)
LAUNCH = "launch"  # EHR launch contexts
SESSION = "session"  # browser login sessions
PENDING = "pending"  # authorization requests waiting for login, patient choice and consent


def secret_id(secret: str) -> str:
    """The storage key of a bearer secret (code, refresh token, session id): its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


class AuthState(ABC):
    """Clients, users, codes, refresh tokens, launch contexts, replay and revocation lists, counters, keys.

    Times are POSIX seconds (floats). Expired entries are invisible to reads even before ``purge``.
    """

    # --- registrations ------------------------------------------------------------------------
    @abstractmethod
    def put_client(self, client: dict) -> None:
        """Create or replace a client registration (``client["client_id"]`` is the key)."""

    @abstractmethod
    def get_client(self, client_id: str) -> dict | None: ...

    @abstractmethod
    def put_user(self, user: dict) -> None:
        """Create or replace a user (``user["username"]`` is the key)."""

    @abstractmethod
    def get_user(self, username: str) -> dict | None: ...

    @abstractmethod
    def delete_user(self, username: str) -> None:
        """Remove a user (their space was destroyed: nothing of them stays); an unknown one is ignored."""

    # --- short-lived documents (codes, launch contexts, sessions, pending authorizations) --------
    @abstractmethod
    def put_temp(self, kind: str, key: str, doc: dict, expires: float) -> None: ...

    @abstractmethod
    def get_temp(self, kind: str, key: str, now: float) -> dict | None: ...

    @abstractmethod
    def take_temp(self, kind: str, key: str, now: float) -> tuple[dict | None, bool]:
        """Atomically mark a document used: ``(doc, True)`` the first time, ``(doc, False)`` on any later
        call (a replay: the caller may revoke what the first use produced), ``(None, False)`` if unknown
        or expired."""

    @abstractmethod
    def delete_temp(self, kind: str, key: str) -> None: ...

    # --- refresh tokens: rotation within a grant family -----------------------------------------
    @abstractmethod
    def put_refresh_token(self, token_id: str, family: str, doc: dict, expires: float) -> None:
        """Store a refresh token (by ``secret_id``); born revoked if its family already is."""

    @abstractmethod
    def get_refresh_token(self, token_id: str) -> dict | None:
        """The stored doc plus ``family``, ``expires``, ``used`` and ``revoked`` (expired ones included:
        the caller tells "expired" from "unknown")."""

    @abstractmethod
    def use_refresh_token(self, token_id: str) -> bool:
        """Atomically mark a refresh token used; False if it was already used or is revoked."""

    @abstractmethod
    def revoke_family(self, family: str, expires: float) -> list[str]:
        """Revoke every refresh token of a grant family and every access token issued in it (their
        ``jti`` are returned); remember the family as revoked until ``expires``."""

    # --- access tokens --------------------------------------------------------------------------
    @abstractmethod
    def record_access_token(self, jti: str, family: str, expires: float) -> None:
        """Remember which grant family an access token belongs to (revoked at once if the family is)."""

    @abstractmethod
    def revoke_access_token(self, jti: str, expires: float) -> None: ...

    @abstractmethod
    def is_revoked(self, jti: str) -> bool: ...

    # --- client assertion replay protection -----------------------------------------------------
    @abstractmethod
    def remember_assertion(self, key: str, expires: float, now: float) -> bool:
        """Record a client assertion ``jti``; False if it was already seen (and is not expired)."""

    # --- counters (login throttling, TOTP replay) -----------------------------------------------
    @abstractmethod
    def increment(self, key: str, expires: float, now: float) -> int:
        """Add one to a counter (created at 0 with this expiry) and return the new value."""

    @abstractmethod
    def count(self, key: str, now: float) -> int: ...

    @abstractmethod
    def reset(self, key: str) -> None: ...

    # --- signing keys ---------------------------------------------------------------------------
    @abstractmethod
    def list_keys(self) -> list[dict]:
        """Every stored signing key document, any order."""

    @abstractmethod
    def add_key(self, key: dict) -> bool:
        """Store a key document (``kid``, ``seq``); False if ``seq`` is taken (a concurrent rotation)."""

    @abstractmethod
    def update_key(self, kid: str, fields: dict) -> None: ...

    @abstractmethod
    def delete_key(self, kid: str) -> None: ...

    # --- housekeeping ---------------------------------------------------------------------------
    @abstractmethod
    def purge(self, now: float) -> None:
        """Drop expired entries (reads already ignore them)."""

    @abstractmethod
    def close(self) -> None: ...


def default_state_url(store_url: str) -> str:
    """The auth state beside the store: ``auth.db`` next to the SQLite file, the same MongoDB database."""
    scheme = urlsplit(store_url).scheme
    if scheme == "sqlite":
        from ..store import sqlite_path

        path = sqlite_path(store_url)
        if path == ":memory:":
            return "sqlite:///:memory:"
        return f"sqlite:///{Path(path).parent / 'auth.db'}"
    if scheme in ("mongodb", "mongodb+srv"):
        return store_url
    raise ValueError(f"unsupported store URL scheme {scheme!r}")


class MissingAuthState(Exception):
    """An administration command found no auth state where it looked (and was not told to create one)."""


def require_auth_state(url: str) -> None:
    """Refuse to go on unless the auth state ``url`` names exists and holds signing keys.

    Administration commands (``token``, ``users``, ``clients``…) run from the wrong directory would
    otherwise create a fresh state with fresh keys, whose tokens the running server rejects.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from ..store import sqlite_path

        path = sqlite_path(url)
        if path != ":memory:" and not Path(path).is_file():
            raise MissingAuthState(f"no authorization state at {Path(path).resolve()}")
        return
    if scheme in ("mongodb", "mongodb+srv"):
        from .state_mongo import has_keys

        if not has_keys(url):
            raise MissingAuthState(f"no signing keys in the auth_keys collection of {_redacted(url)}")
        return
    raise ValueError(f"unsupported auth state URL scheme {scheme!r}: use sqlite:///… or mongodb://…")


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}" if "@" in rest else url


def open_auth_state(url: str, *, write_concern: str = "majority") -> AuthState:
    """Open (connect to, create tables/indexes of) the auth state a URL names."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from ..store import sqlite_path
        from .state_sqlite import SQLiteAuthState

        return SQLiteAuthState(sqlite_path(url))
    if scheme in ("mongodb", "mongodb+srv"):
        from .state_mongo import MongoAuthState

        return MongoAuthState(url, write_concern=write_concern)
    raise ValueError(f"unsupported auth state URL scheme {scheme!r}: use sqlite:///… or mongodb://…")

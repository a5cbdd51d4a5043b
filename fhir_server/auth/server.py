"""``AuthServer``: the authorization server as the app and the resource server see it.

The contract with the resource server (``fhir_server.security``): ``verify_access_token`` (CPU only: the
published keys are in memory) and ``is_revoked`` (one indexed lookup in the auth state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from starlette.concurrency import run_in_threadpool

from ..config import Settings
from .assertions import JwksCache
from .clients import Client, new_client
from .directory import Professionals
from .issuance import ID_TOKEN_LIFETIME, TokenIssuer
from .keys import RELOAD_INTERVAL, KeyRing
from .oauth import SmartAuthorizationServer
from .state import LAUNCH, AuthState, default_state_url, open_auth_state, require_auth_state
from .throttle import LoginThrottle
from .tokens import LEEWAY, AccessTokenRequest, mint_access_token
from .tokens import verify_access_token as _verify
from .users import User, new_user

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("fhir_server.auth")

LAUNCH_LIFETIME = 3600  # an EHR launch id is good for an hour
PURGE_INTERVAL = 600
T = TypeVar("T")


class AuthServer:
    def __init__(self, settings: Settings, state_url: str) -> None:
        self.settings = settings
        self.state_url = state_url
        self._state: AuthState | None = None
        self._keys: KeyRing | None = None
        self._oauth: SmartAuthorizationServer | None = None
        self._issuer: TokenIssuer | None = None
        self._throttle: LoginThrottle | None = None
        self._housekeeping: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._revocation_listeners: list[Callable[[str], None]] = []
        self.jwks_cache = JwksCache()
        self.professionals = Professionals(settings)

    @property
    def directory(self) -> Store | None:
        """The FHIR store professionals are looked up in (the app sets it after creating the store)."""
        return self.professionals.store

    @directory.setter
    def directory(self, store: Store | None) -> None:
        self.professionals.store = store

    # --- lifecycle --------------------------------------------------------------------------------
    def start_sync(self, *, create: bool = True) -> None:
        """Open the state, load (or create, on first start) the signing keys; with ``create=False`` a missing
        state is an error (``MissingAuthState``) rather than a new one."""
        if self._state is not None:
            return
        if not create:
            require_auth_state(self.state_url)
        state = open_auth_state(self.state_url, write_concern=self.settings.mongo_write_concern)
        # Keys must stay published as long as the longest-lived token they signed.
        retention = max(self.settings.access_token_lifetime, ID_TOKEN_LIFETIME) + 2 * LEEWAY
        keys = KeyRing(state, retention)
        keys.load()
        self._state, self._keys = state, keys
        self._issuer = TokenIssuer(self.settings, state, keys, self._revoked, self.professionals)
        self._oauth = SmartAuthorizationServer(self.settings, state, self._issuer, self.jwks_cache)
        self._throttle = LoginThrottle(state)

    def close_sync(self) -> None:
        if self._state is not None:
            self._state.close()
        self._state = self._keys = self._oauth = self._issuer = self._throttle = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await run_in_threadpool(self.start_sync)
        self.professionals.matrix  # noqa: B018 (load it now: a broken operator's matrix fails the start, not a token)
        self._housekeeping = asyncio.create_task(self._housekeep(), name="auth-housekeeping")

    async def close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        await run_in_threadpool(self.close_sync)

    async def _housekeep(self) -> None:
        """Pick up rotated keys (other processes, ``fhir-server keys rotate``); drop expired entries."""
        last_purge = 0.0
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            try:
                await run_in_threadpool(self.keys.load)
                if time.monotonic() - last_purge > PURGE_INTERVAL:
                    await run_in_threadpool(self.state.purge, time.time())
                    last_purge = time.monotonic()
            except Exception:  # a blip of the state must not end housekeeping
                log.exception("auth housekeeping failed")

    # --- parts (once started) -------------------------------------------------------------------
    @staticmethod
    def _started(part: T | None) -> T:
        if part is None:
            raise RuntimeError("the authorization server is not started")
        return part

    @property
    def state(self) -> AuthState:
        return self._started(self._state)

    @property
    def keys(self) -> KeyRing:
        return self._started(self._keys)

    @property
    def oauth(self) -> SmartAuthorizationServer:
        return self._started(self._oauth)

    @property
    def issuer(self) -> TokenIssuer:
        return self._started(self._issuer)

    @property
    def throttle(self) -> LoginThrottle:
        return self._started(self._throttle)

    # --- the resource server's contract -----------------------------------------------------------
    def verify_access_token(self, token: str, audience: str) -> dict:
        """Claims of a valid access token for ``audience`` (the FHIR base URL); raises ``InvalidToken``."""
        return _verify(self.keys, token, audience)

    def is_revoked(self, jti: str) -> bool:
        return self.state.is_revoked(jti)

    def on_revoked(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(jti)`` (on the event loop) for each access token this process revokes, so a
        verification cache can drop it at once rather than at its next revocation check."""
        self._revocation_listeners.append(listener)

    def _revoked(self, jtis: list[str]) -> None:
        # Revocations happen in worker threads; listeners run on the event loop (they are not thread-safe).
        for jti in jtis:
            for listener in self._revocation_listeners:
                if self._loop is not None and self._loop.is_running():
                    self._loop.call_soon_threadsafe(listener, jti)
                else:
                    listener(jti)

    def mint_access_token(
        self,
        *,
        client_id: str,
        scope: str,
        sub: str | None = None,
        patient: str | None = None,
        encounter: str | None = None,
        fhir_user: str | None = None,
        managed_patients: Sequence[str] | None = None,
        audience: str | None = None,
        lifetime: int | None = None,
        purpose_of_use: str | None = None,
        extra: dict | None = None,
    ) -> str:
        """Sign an access token directly (``fhir-server token``, tests): no client or user check."""
        request = AccessTokenRequest(
            client_id=client_id,
            scope=scope,
            sub=sub or client_id,
            audience=(audience or self.default_base_url()).rstrip("/"),
            lifetime=lifetime or self.settings.access_token_lifetime,
            patient=patient,
            encounter=encounter,
            fhir_user=fhir_user,
            managed_patients=managed_patients,
            purpose_of_use=purpose_of_use,
            extra=extra or {},
        )
        self.keys.reload_if_stale()
        return mint_access_token(self.keys, request)[0]

    def default_base_url(self) -> str:
        """The configured public base URL, else the address ``fhir-server serve`` listens on."""
        if self.settings.base_url:
            return self.settings.base_url.rstrip("/")
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return f"http://{host}:{self.settings.port}"

    # --- administration (CLI, tests) ---------------------------------------------------------------
    def client(self, client_id: str) -> Client | None:
        return self.oauth.query_client(client_id)

    def add_client(self, client_id: str, type_: str, **options) -> str | None:
        """Register (or replace) a client; returns the generated secret of a confidential client."""
        client, secret = new_client(client_id, type_, **options)
        self.state.put_client(client.to_doc())
        return secret

    def add_user(self, username: str, password: str, **options) -> User:
        user = new_user(username, password, **options)
        self.state.put_user(user.to_doc())
        return user

    def user(self, username: str) -> User | None:
        doc = self.state.get_user(username)
        return User.from_doc(doc) if doc is not None else None

    def create_launch(self, patient: str | None = None, encounter: str | None = None, user: str | None = None) -> str:
        """An EHR launch context; the app receives the id as ``launch`` and sends it back to authorize.
        ``user``: only this user may sign in with it."""
        launch = secrets.token_urlsafe(24)
        context = {"patient": patient, "encounter": encounter, **({"user": user} if user else {})}
        self.state.put_temp(LAUNCH, launch, context, time.time() + LAUNCH_LIFETIME)
        return launch

    def rotate_keys(self, delay: float | None = None) -> str:
        return self.keys.rotate(delay=delay) if delay is not None else self.keys.rotate()


def create_auth_server(settings: Settings, store_url: str | None = None) -> AuthServer:
    """Build (not start) the authorization server; its state is ``settings.auth_state`` or beside the store."""
    state_url = settings.auth_state or default_state_url(store_url or settings.store)
    return AuthServer(settings, state_url)

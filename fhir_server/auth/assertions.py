"""``private_key_jwt`` client authentication (RFC 7523 §2.2) as SMART Backend Services profile it.

The assertion is a JWT signed by the client with RS384 or ES384 (the two algorithms SMART servers must
accept; nothing else is), with ``iss`` = ``sub`` = client_id, ``aud`` = our token endpoint URL, an ``exp``
at most five minutes ahead, and a ``jti`` never seen before (remembered until the assertion expires).
The client's public keys are registered by value (a JWKS) or by URL (fetched with httpx, cached, and
fetched again — at most every ``JWKS_REFRESH`` seconds — when an unknown ``kid`` shows up: key rotation).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .clients import PRIVATE_KEY_JWT, Client
from .state import AuthState

if TYPE_CHECKING:
    from authlib.oauth2.rfc6749 import OAuth2Request

ALGORITHMS = ("RS384", "ES384")
MAX_LIFETIME = 300  # SMART: exp no more than five minutes in the future
LEEWAY = 30
JWKS_TTL = 300  # seconds a fetched JWKS is trusted
JWKS_REFRESH = 30  # least seconds between two fetches of one URL


def fetch_jwks(url: str) -> dict:
    """GET a client's JWKS (module-level so tests can replace it)."""
    response = httpx.get(url, timeout=5, follow_redirects=False, headers={"Accept": "application/json"})
    response.raise_for_status()
    return response.json()


class JwksCache:
    def __init__(self, fetch: Callable[[str], dict] | None = None) -> None:
        self._fetch = fetch
        self._cache: dict[str, tuple[KeySet, float]] = {}
        self._lock = threading.Lock()

    def get(self, url: str, *, force: bool = False, now: float | None = None) -> KeySet:
        now = time.time() if now is None else now
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None:
            keys, fetched = cached
            if now - fetched < (JWKS_REFRESH if force else JWKS_TTL):
                return keys
        try:
            keys = KeySet.import_key_set((self._fetch or fetch_jwks)(url))
        except (httpx.HTTPError, ValueError, JoseError, TypeError, KeyError):
            if cached is not None:
                return cached[0]  # keep the last good keys through a blip of the client's server
            raise InvalidClientError(description="The client JWKS URL could not be read") from None
        with self._lock:
            self._cache[url] = (keys, now)
        return keys


class PrivateKeyJwtAuthentication(JWTBearerClientAssertion):
    """Registered on authlib's server as the ``private_key_jwt`` client authentication method."""

    CLIENT_AUTH_METHOD = PRIVATE_KEY_JWT

    def __init__(self, state: AuthState, jwks: JwksCache) -> None:
        super().__init__(validate_jti=True, leeway=LEEWAY)
        self._state = state
        self._jwks = jwks

    def __call__(self, query_client: Callable[[str], Client | None], request: OAuth2Request) -> Client | None:
        form = request.form
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != self.CLIENT_ASSERTION_TYPE or not assertion:
            return None
        header, unverified = self.extract_assertion(assertion)
        client_id = unverified.get("sub")
        if not isinstance(client_id, str):
            raise InvalidClientError(description="The client assertion has no 'sub'")
        client = query_client(client_id)
        if client is None:
            raise InvalidClientError(description="The client does not exist on this server")
        if header.get("alg") not in ALGORITHMS:
            raise InvalidClientError(description="Client assertions must be signed with RS384 or ES384")
        if "jku" in header and header["jku"] != client.jwks_url:
            raise InvalidClientError(description="The assertion 'jku' is not the registered JWKS URL")
        claims = self._verify_signature(client, assertion, header)
        self._verify_claims(client, claims, audiences(request))
        request.client = client
        return self.authenticate_client(client)

    def _verify_signature(self, client: Client, assertion: str, header: dict) -> dict:
        return verify_signed_by_client(client, assertion, self._jwks, InvalidClientError, "client assertion")

    def _verify_claims(self, client: Client, claims: dict, aud: list[str]) -> None:
        now = time.time()
        registry = jwt.JWTClaimsRegistry(
            leeway=LEEWAY,
            iss={"essential": True, "value": client.client_id},
            sub={"essential": True, "value": client.client_id},
            aud={"essential": True, "values": aud},
            exp={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidClientError(description=f"Client assertion: {exc.description}") from None
        exp = claims["exp"]
        if not isinstance(exp, int | float) or exp > now + MAX_LIFETIME + LEEWAY:
            raise InvalidClientError(description="The client assertion 'exp' is more than 5 minutes ahead")
        if not isinstance(claims["jti"], str):
            raise InvalidClientError(description="The client assertion 'jti' is not a string")
        if not self._state.remember_assertion(f"{client.client_id}:{claims['jti']}", exp + LEEWAY, now):
            raise InvalidClientError(description="The client assertion 'jti' was already used")


def client_keys(client: Client, jwks: JwksCache, *, force: bool = False) -> KeySet:
    """The client's registered public keys (by value, or fetched from its JWKS URL)."""
    if client.jwks:
        return KeySet.import_key_set(client.jwks)
    if client.jwks_url:
        return jwks.get(client.jwks_url, force=force)
    raise InvalidClientError(description="The client has no registered keys")


def verify_signed_by_client(
    client: Client, token: str, jwks: JwksCache, error: type[OAuth2Error], what: str = "assertion"
) -> dict:
    """The claims of a JWT signed (RS384/ES384) by one of the client's keys; ``error`` when it does not verify.
    An unknown ``kid`` with keys registered by URL fetches the JWKS again once (key rotation)."""
    for force in (False, True):
        try:
            return dict(jwt.decode(token, client_keys(client, jwks, force=force), algorithms=ALGORITHMS).claims)
        except JoseError as exc:
            unknown_kid = type(exc).__name__ == "InvalidKeyIdError"
            if not (unknown_kid and client.jwks_url and not force):
                raise error(description=f"The {what} signature does not verify") from None
    raise error(description=f"The {what} signature does not verify")  # pragma: no cover


def audiences(request: OAuth2Request) -> list[str]:
    """What an assertion's ``aud`` may be: the token endpoint (SMART), or the endpoint it is sent to."""
    base = getattr(request, "base", "")
    return list(dict.fromkeys([f"{base}/auth/token", request.uri.split("?")[0]]))

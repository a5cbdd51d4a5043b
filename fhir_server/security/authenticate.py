"""Bearer-token authentication (RFC 6750) in front of every FHIR endpoint, the read fast path included.

A verified token becomes a ``Principal`` and its ``ScopedAccess`` in the ASGI scope; interactions
enforce it (rest.caller.context). Discovery, the CapabilityStatement, the OpenAPI document and its page
(rest.openapi) and the OAuth endpoints are public.
Signature checks are cached per token (until it expires); revocation is re-checked at most every
``REVOCATION_RECHECK_SECONDS`` per token (immediately in the process that revoked it, see ``forget``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

import anyio.to_thread
from starlette.datastructures import State
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Issue, operation_outcome
from ..fhirjson import dumps
from ..policy import emergency
from ..policy.access import access_for
from ..policy.codes import NORMAL
from ..space import representatives
from ..space.clock import CLOCK
from .access import ScopedAccess
from .principal import Principal

log = logging.getLogger("fhir_server.security")

ACCESS_KEY = "fhir.access"  # the caller's ScopedAccess in the ASGI scope (read by rest.caller)
PUBLIC_PATHS = ("/metadata", "/healthz", "/readyz")  # probes: no data, see rest/health.py
PUBLIC_PATHS += ("/openapi.json", "/docs")  # the API's description and its page (rest/openapi.py): no data
PUBLIC_PREFIXES = ("/.well-known/", "/auth/", "/docs/")
REVOCATION_RECHECK_SECONDS = 2.0
CACHE_SIZE = 10_000
REALM = 'Bearer realm="fhir-server"'


class TokenVerifier(Protocol):
    """What the authorization server offers the resource server (fhir_server.auth)."""

    def verify_access_token(self, token: str, audience: str) -> dict[str, Any]: ...

    def is_revoked(self, jti: str) -> bool: ...


class InvalidCredentials(Exception):
    pass


class _Verified:
    __slots__ = ("access", "audience", "checked", "links")

    def __init__(self, access: ScopedAccess, audience: str, checked: float) -> None:
        self.access = access
        self.audience = audience
        self.checked = checked
        self.links: tuple[str, ...] | None = None  # what names the user in RelatedPerson.identifier


class Authenticate:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self._state = state  # app.state.auth: the authorization server, None when auth is off
        self._cache: OrderedDict[str, _Verified] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        verifier: TokenVerifier | None = getattr(self._state, "auth", None)
        if scope["type"] != "http" or verifier is None or _is_public(scope):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            await _challenge(send, "The request needs an access token: Authorization: Bearer <token>", None)
            return
        try:
            access = await self._access(verifier, token, scope)
            if access.principal.represented:
                access = await self._represent(token, access)
            scope[ACCESS_KEY] = access
        except InvalidCredentials as exc:
            await _challenge(send, f"The access token is not valid: {exc}", "invalid_token")
            return
        principal = access.principal
        if principal.access_mode != NORMAL and principal.professional is not None:
            emergency.report(
                emergency.EmergencyAccess(principal.access_mode, principal.justification, principal.professional,
                                          principal.client_id, principal.token_id, scope["method"], scope["path"])
            )  # fmt: skip
        await self.app(scope, receive, send)

    def forget(self, jti: str) -> None:
        """Drop a revoked token from the cache at once (revocation endpoint of this process)."""
        for token, verified in list(self._cache.items()):
            if verified.access.principal.token_id == jti:
                del self._cache[token]

    async def _access(self, verifier: TokenVerifier, token: str, scope: Scope) -> ScopedAccess:
        now = time.time()
        audience = request_audience(scope, self._state)
        verified = self._cache.get(token)
        if verified is None:
            try:
                claims = verifier.verify_access_token(token, audience)
            except Exception as exc:  # InvalidToken from the authorization server, or a malformed token
                raise InvalidCredentials(getattr(exc, "description", None) or "signature or claims rejected") from None
            verified = _Verified(access_for(Principal.from_claims(claims)), audience, 0.0)
        elif verified.audience != audience:  # the same server reached under another name: not this token's
            raise InvalidCredentials("it was issued for another audience")
        principal = verified.access.principal
        if principal.expires_at and principal.expires_at < now:
            self._cache.pop(token, None)
            raise InvalidCredentials("it has expired")
        if now - verified.checked > REVOCATION_RECHECK_SECONDS:
            if principal.token_id and await anyio.to_thread.run_sync(verifier.is_revoked, principal.token_id):
                self._cache.pop(token, None)
                raise InvalidCredentials("it was revoked")
            verified.checked = now
            self._remember(token, verified)
        return verified.access

    async def _represent(self, token: str, access: ScopedAccess) -> ScopedAccess:
        """A token acting for others through RelatedPersons reaches only those valid now: one indexed query per
        request (never cached), so a revocation, a refusal or an 18th birthday holds from the next request on."""
        store = self._state.context.store
        principal = access.principal
        verified = self._cache.get(token)
        links = verified.links if verified is not None else None
        if links is None:  # the user's account and INS: fixed for the token's life
            links = await representatives.links_of(store, principal.subject, principal.own_patient)
            if verified is not None:
                verified.links = links
        held = await representatives.held_by(store, links, CLOCK.now())
        return access_for(principal.acting_for(held))

    def _remember(self, token: str, verified: _Verified) -> None:
        self._cache[token] = verified
        self._cache.move_to_end(token)
        while len(self._cache) > CACHE_SIZE:  # oldest first out (insertion order, refreshed every recheck)
            self._cache.popitem(last=False)


def _is_public(scope: Scope) -> bool:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if kind.lower() == "bearer" and token else None
    return None


def request_audience(scope: Scope, state: State) -> str:
    """The FHIR base URL this request was addressed to: the configured one, else from the Host header
    (what ``rest.responses.base_url`` derives for links, without building a Request per call)."""
    configured = state.settings.base_url
    if configured:
        return configured.rstrip("/")
    for name, value in scope["headers"]:
        if name == b"host":
            return f"{scope.get('scheme', 'http')}://{value.decode('latin-1')}{scope.get('root_path', '')}".rstrip("/")
    return str(Request(scope).base_url).rstrip("/")


async def _challenge(send: Send, text: str, error: str | None) -> None:
    """401 with the RFC 6750 challenge and an OperationOutcome (never the token, never its claims)."""
    quoted = text.replace('"', "'")
    challenge = REALM if error is None else f'{REALM}, error="{error}", error_description="{quoted}"'
    body = dumps(operation_outcome([Issue("login", text)]))
    headers = [
        (b"content-type", b"application/fhir+json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge.encode("latin-1", "replace")),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})

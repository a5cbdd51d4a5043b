"""Access tokens and id_tokens: JWTs signed with the server's key (``keys``).

Access tokens follow RFC 9068 (``typ: at+jwt``) with the SMART context claims the resource server reads:
``iss``, ``aud`` (the FHIR base URL), ``sub``, ``client_id``, ``scope``, ``iat``, ``exp``, ``jti`` and,
when they apply, ``patient``, ``encounter``, ``fhirUser``, ``managed_patients``, ``purpose_of_use``.
The ``typ`` check keeps an id_token (same key, ``aud`` = the client) from ever passing as an access token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from joserfc import jws, jwt
from joserfc.errors import JoseError

from .keys import ALG, KeyRing

ACCESS_TOKEN_TYPE = "at+jwt"
LEEWAY = 30  # seconds of clock skew tolerated on exp/iat


class InvalidToken(Exception):
    """A token that does not verify; ``description`` says why (safe to return to the client)."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass(frozen=True, slots=True)
class AccessTokenRequest:
    """What an access token says (the context the user approved)."""

    client_id: str
    scope: str
    sub: str
    audience: str
    lifetime: int
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    managed_patients: Sequence[str] | None = None
    purpose_of_use: str | None = None
    extra: dict = field(default_factory=dict)


def mint_access_token(keys: KeyRing, request: AccessTokenRequest, now: float | None = None) -> tuple[str, dict]:
    """Sign an access token; returns it with its claims (``jti`` and ``exp`` for bookkeeping)."""
    now = time.time() if now is None else now
    key = keys.current(now)
    issued = int(now)
    claims: dict = {
        "iss": request.audience,  # one server: the FHIR base URL is both the issuer and the audience
        "aud": request.audience,
        "sub": request.sub,
        "client_id": request.client_id,
        "scope": request.scope,
        "iat": issued,
        "exp": issued + request.lifetime,
        "jti": uuid.uuid4().hex,
    }
    optional = {
        "patient": request.patient,
        "encounter": request.encounter,
        "fhirUser": request.fhir_user,
        "managed_patients": list(request.managed_patients) if request.managed_patients is not None else None,
        "purpose_of_use": request.purpose_of_use,
    }
    claims.update({k: v for k, v in optional.items() if v is not None})
    claims.update(request.extra)
    token = jwt.encode({"alg": ALG, "typ": ACCESS_TOKEN_TYPE, "kid": key.kid}, claims, key.key, algorithms=[ALG])
    return token, claims


def mint_id_token(keys: KeyRing, claims: dict, now: float | None = None) -> str:
    key = keys.current(now)
    return jwt.encode({"alg": ALG, "typ": "JWT", "kid": key.kid}, claims, key.key, algorithms=[ALG])


def _registry(**options: dict) -> jwt.JWTClaimsRegistry:
    return jwt.JWTClaimsRegistry(leeway=LEEWAY, **options)


def decode_signed(keys: KeyRing, token: str, typ: str | None) -> tuple[dict, dict]:
    """Signature check against the published keys (by ``kid``); returns (header, claims)."""
    try:
        header = jws.extract_compact(token.encode()).headers()
    except (JoseError, ValueError, UnicodeError):
        raise InvalidToken("The token is not a well-formed JWT") from None
    if typ is not None and header.get("typ") != typ:
        raise InvalidToken(f"The token is not of type {typ}")
    kid = header.get("kid")
    key = keys.public_key(kid) if isinstance(kid, str) else None
    if key is None:
        raise InvalidToken("The token was not signed by a key of this server")
    try:
        decoded = jwt.decode(token, key, algorithms=[ALG])
    except (JoseError, ValueError):
        raise InvalidToken("The token signature does not verify") from None
    return header, dict(decoded.claims)


def verify_access_token(keys: KeyRing, token: str, audience: str) -> dict:
    """Signature, ``typ``, ``iss``, ``aud``, ``exp``/``iat``, and the presence of the claims we rely on."""
    _, claims = decode_signed(keys, token, ACCESS_TOKEN_TYPE)
    audience = audience.rstrip("/")
    registry = _registry(
        iss={"essential": True, "value": audience},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
        jti={"essential": True},
        client_id={"essential": True},
        scope={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise InvalidToken(exc.description or "The token is invalid") from None
    if not isinstance(claims.get("scope"), str):
        raise InvalidToken("The token scope is not a string")
    return claims

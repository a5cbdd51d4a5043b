"""Registered client applications (RFC 6749 §2) and what each type may do.

- ``public``: a browser or mobile app without a secret: authorization code + PKCE (mandatory), refresh.
- ``confidential``: a server-side app: authorization code (PKCE accepted), refresh; authenticates with a
  client secret (``client_secret_basic``/``_post``) or, when registered with a JWKS, ``private_key_jwt``.
- ``backend``: SMART Backend Services: ``client_credentials`` only, ``private_key_jwt`` only, system scopes.
- ``professional-software``: Ségur-certified software acting for a named health professional (PS): the JWT
  bearer grant of RFC 7523 only (``professional_grant.py``), ``private_key_jwt`` only, ``user/`` scopes and the
  emergency ``access-mode/…`` scopes it is registered for.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin

from . import scopes as smart
from .passwords import hash_client_secret, verify_client_secret

PUBLIC, CONFIDENTIAL, BACKEND = "public", "confidential", "backend"
PROFESSIONAL_SOFTWARE = "professional-software"
CLIENT_TYPES = (PUBLIC, CONFIDENTIAL, BACKEND, PROFESSIONAL_SOFTWARE)
WITH_KEYS_ONLY = (BACKEND, PROFESSIONAL_SOFTWARE)  # private_key_jwt, no redirect URI
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1
PRIVATE_KEY_JWT = "private_key_jwt"
SECRET_METHODS = ("client_secret_basic", "client_secret_post")

DEFAULT_APP_SCOPE = (
    "openid fhirUser profile launch launch/patient launch/encounter online_access offline_access patient/*.rs user/*.rs"
)
DEFAULT_BACKEND_SCOPE = "system/*.rs"
DEFAULT_PROFESSIONAL_SCOPE = f"openid fhirUser user/*.cruds {' '.join(smart.ACCESS_MODE_SCOPES)}"


class ClientError(ValueError):
    """A registration that cannot be accepted (message for the operator)."""


@dataclass
class Client(ClientMixin):
    client_id: str
    type: str
    redirect_uris: list[str] = field(default_factory=list)
    scope: list[str] = field(default_factory=list)
    secret_hash: str | None = None
    jwks: dict | None = None
    jwks_url: str | None = None
    name: str | None = None

    @classmethod
    def from_doc(cls, doc: dict) -> Client:
        return cls(**{k: doc.get(k) for k in cls.__dataclass_fields__ if k in doc})

    def to_doc(self) -> dict:
        return asdict(self)

    @property
    def display_name(self) -> str:
        return self.name or self.client_id

    @property
    def contexts(self) -> frozenset[str]:
        return _contexts(self.type)

    def allowed_scopes(self, requested: str | None) -> list[str]:
        return smart.allowed(smart.split(requested), self.scope, self.contexts)

    # --- authlib's ClientMixin
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # SMART apps always send redirect_uri; never guess one

    def get_allowed_scope(self, scope: str | None) -> str | None:
        kept = self.allowed_scopes(scope)
        return smart.join(kept) if kept else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact string match (RFC 9700 §4.1.3)

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_client_secret(client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.type == PUBLIC:
            return method == "none"
        if method == PRIVATE_KEY_JWT:
            return bool(self.jwks or self.jwks_url)
        return method in SECRET_METHODS and self.secret_hash is not None

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and self.type not in WITH_KEYS_ONLY

    def check_grant_type(self, grant_type: str) -> bool:
        if self.type == BACKEND:
            return grant_type == "client_credentials"
        if self.type == PROFESSIONAL_SOFTWARE:
            return grant_type == JWT_BEARER
        return grant_type in ("authorization_code", "refresh_token")


def _contexts(type_: str) -> frozenset[str]:
    if type_ == BACKEND:
        return smart.SYSTEM_CONTEXTS
    if type_ == PROFESSIONAL_SOFTWARE:
        return smart.PROFESSIONAL_CONTEXTS
    return smart.USER_CONTEXTS


def _check_redirect_uri(uri: str) -> None:
    parts = urlsplit(uri)
    if not parts.scheme or parts.fragment or (parts.scheme in ("http", "https") and not parts.netloc):
        raise ClientError(f"redirect URI {uri!r} must be absolute, without fragment")


def new_client(
    client_id: str,
    type_: str,
    *,
    redirect_uris: list[str] | None = None,
    scope: str | None = None,
    jwks: dict | None = None,
    jwks_url: str | None = None,
    name: str | None = None,
) -> tuple[Client, str | None]:
    """A validated registration and its generated secret (confidential clients without keys), to print once."""
    if type_ not in CLIENT_TYPES:
        raise ClientError(f"client type must be one of {', '.join(CLIENT_TYPES)}")
    if not client_id or any(c.isspace() for c in client_id) or len(client_id) > 200:
        raise ClientError("client id must be 1-200 characters without spaces")
    redirect_uris = list(redirect_uris or [])
    for uri in redirect_uris:
        _check_redirect_uri(uri)
    if type_ not in WITH_KEYS_ONLY and not redirect_uris:
        raise ClientError(f"a {type_} client needs at least one --redirect-uri")
    if type_ in WITH_KEYS_ONLY and not (jwks or jwks_url):
        raise ClientError(f"a {type_} client needs its public keys: --jwks FILE or --jwks-url URL")
    if type_ == PUBLIC and (jwks or jwks_url):
        raise ClientError("a public client has no keys: register it as confidential")
    if jwks is not None and not isinstance(jwks.get("keys"), list):
        raise ClientError("the JWKS must be a JSON object with a 'keys' list")
    default = {BACKEND: DEFAULT_BACKEND_SCOPE, PROFESSIONAL_SOFTWARE: DEFAULT_PROFESSIONAL_SCOPE}
    registered = smart.split(scope or default.get(type_, DEFAULT_APP_SCOPE))
    contexts = _contexts(type_)
    unusable = [s for s in registered if s not in smart.allowed([s], [s], contexts)]
    if type_ != PROFESSIONAL_SOFTWARE:  # emergency access modes are for professionals' software only
        unusable += [s for s in registered if s in smart.ACCESS_MODE_SCOPES]
    if unusable:
        raise ClientError(f"scopes a {type_} client cannot use: {' '.join(unusable)}")
    secret = secrets.token_urlsafe(32) if type_ == CONFIDENTIAL and not (jwks or jwks_url) else None
    client = Client(
        client_id=client_id,
        type=type_,
        redirect_uris=redirect_uris,
        scope=registered,
        secret_hash=hash_client_secret(secret) if secret else None,
        jwks=jwks,
        jwks_url=jwks_url,
        name=name,
    )
    return client, secret

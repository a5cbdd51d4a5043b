"""Dynamic client registration (RFC 7591) for the operator's tooling.

Open registration has no place on a health-data server: ``POST /auth/register`` needs an *initial access
token* (RFC 7591 §3), i.e. an access token of this server carrying the ``client-registration`` scope,
which only an operator mints (``fhir-server token --client <admin> --scope client-registration``).
Client metadata map onto the three client types of ``fhir-server clients add``:
``token_endpoint_auth_method`` none → public; client_secret_basic/_post → confidential (a secret is
generated); private_key_jwt → backend when ``grant_types`` has client_credentials, professional software when it
has the RFC 7523 JWT bearer grant, else confidential with keys.
"""

from __future__ import annotations

import secrets
import time

from .clients import BACKEND, CONFIDENTIAL, JWT_BEARER, PROFESSIONAL_SOFTWARE, PUBLIC, ClientError

REGISTRATION_SCOPE = "client-registration"
_METHODS = {"none": PUBLIC, "client_secret_basic": CONFIDENTIAL, "client_secret_post": CONFIDENTIAL}


class RegistrationError(ValueError):
    """An RFC 7591 §3.2.2 error: ``error`` code and description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


def registration_options(metadata: object) -> tuple[str, dict]:
    """The client type and the ``add_client`` options the metadata ask for (RegistrationError if invalid)."""
    if not isinstance(metadata, dict):
        raise RegistrationError("invalid_client_metadata", "The body must be a JSON object of client metadata")
    method = metadata.get("token_endpoint_auth_method", "client_secret_basic")
    grants = metadata.get("grant_types") or ["authorization_code"]
    if not isinstance(grants, list) or not all(isinstance(g, str) for g in grants):
        raise RegistrationError("invalid_client_metadata", "grant_types must be a list of strings")
    if method == "private_key_jwt" and "client_credentials" in grants and JWT_BEARER in grants:
        raise RegistrationError("invalid_client_metadata", "client_credentials and the JWT bearer grant are two "
                                "different clients: register them apart")  # fmt: skip
    if method == "private_key_jwt":
        type_ = BACKEND if "client_credentials" in grants else CONFIDENTIAL
        type_ = PROFESSIONAL_SOFTWARE if JWT_BEARER in grants else type_
    elif method in _METHODS:
        type_ = _METHODS[method]
    else:
        raise RegistrationError("invalid_client_metadata", f"token_endpoint_auth_method {method!r} is not supported")
    redirect_uris = metadata.get("redirect_uris") or []
    if not isinstance(redirect_uris, list) or not all(isinstance(u, str) for u in redirect_uris):
        raise RegistrationError("invalid_redirect_uri", "redirect_uris must be a list of URLs")
    scope = metadata.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise RegistrationError("invalid_client_metadata", "scope must be a space-separated string")
    options = {
        "redirect_uris": redirect_uris,
        "scope": scope,
        "jwks": metadata.get("jwks"),
        "jwks_url": metadata.get("jwks_uri"),
        "name": metadata.get("client_name"),
    }
    return type_, options


def register(add_client, metadata: object) -> dict:
    """Register the client ``metadata`` describe (``add_client``: ``AuthServer.add_client``); the RFC 7591
    §3.2.1 response body."""
    type_, options = registration_options(metadata)
    client_id = secrets.token_urlsafe(16)
    try:
        secret = add_client(client_id, type_, **options)
    except ClientError as exc:
        code = "invalid_redirect_uri" if "redirect" in str(exc) else "invalid_client_metadata"
        raise RegistrationError(code, str(exc)) from None
    assert isinstance(metadata, dict)
    answer = {
        "client_id": client_id,
        "client_id_issued_at": int(time.time()),
        "token_endpoint_auth_method": metadata.get("token_endpoint_auth_method", "client_secret_basic"),
        "grant_types": metadata.get("grant_types") or ["authorization_code"],
        **{k: metadata[k] for k in ("redirect_uris", "scope", "client_name", "jwks", "jwks_uri") if k in metadata},
    }
    if secret is not None:
        answer |= {"client_secret": secret, "client_secret_expires_at": 0}
    return answer

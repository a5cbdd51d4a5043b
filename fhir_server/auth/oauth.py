"""authlib wired for SMART: the authorization server, its grants, PKCE and OpenID extensions, endpoints.

authlib does the OAuth protocol work (request validation, client authentication, PKCE, error bodies);
this module supplies storage, SMART's rules and our token format. Everything here is synchronous: the
routes run it in a worker thread with the body already read (``SmartRequest``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

from authlib.consts import default_json_headers
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Payload,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import OpenIDCode

from . import scopes as smart
from .assertions import JwksCache, PrivateKeyJwtAuthentication
from .clients import PUBLIC, Client
from .issuance import AccessTokenInfo, RefreshTokenInfo, TokenIssuer
from .professional_grant import ProfessionalJwtBearerGrant
from .state import CODE, LAUNCH, SESSION, AuthState, secret_id
from .subject import Subject

if TYPE_CHECKING:
    from starlette.datastructures import Headers

    from ..config import Settings

# authlib refuses non-https request URLs; transport security is the deployment's (TLS at the reverse
# proxy, whose hop to us is plain http), so the URL authlib checks is a fixed https one and the real
# URL is set afterwards.
_CHECKED_URI = "https://localhost/"
TOKEN_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]


class Params(dict):
    """Form or query parameters: ``get``/``[]`` give the first value, ``getlist`` every value."""

    def __init__(self, items: Mapping[str, list[str]]) -> None:
        super().__init__({k: v[0] for k, v in items.items() if v})
        self.lists = {k: list(v) for k, v in items.items()}

    def getlist(self, key: str) -> list[str]:
        return self.lists.get(key, [])


class _Payload(OAuth2Payload):
    def __init__(self, params: Params) -> None:
        self._params = params

    @property
    def data(self) -> Params:
        return self._params

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._params.lists


class SmartRequest(OAuth2Request):
    """An authlib request from an HTTP request whose parameters were already read; ``base`` is the
    public base URL (issuer and FHIR audience) the request came in on."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | Mapping[str, str],
        query: Mapping[str, list[str]],
        form: Mapping[str, list[str]],
        base: str,
    ) -> None:
        super().__init__(method, _CHECKED_URI, headers=headers)
        self.uri = uri
        self.base = base
        self._args = Params(query)
        self._form = Params(form)
        self.payload = _Payload(self._form if method == "POST" else self._args)

    @property
    def args(self) -> Params:
        return self._args

    @property
    def form(self) -> Params:
        return self._form


class AuthorizationCode:
    """A stored code as authlib's grant and extensions read it."""

    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.code_challenge = doc.get("code_challenge")
        self.code_challenge_method = doc.get("code_challenge_method")

    def get_redirect_uri(self) -> str:
        return self.doc["redirect_uri"]

    def get_scope(self) -> str:
        return self.doc["subject"]["scope"]

    def get_nonce(self) -> str | None:
        return self.doc.get("nonce")

    def get_auth_time(self) -> int | None:
        return self.doc["subject"].get("auth_time")

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str] | None:
        return self.doc["subject"].get("amr") or None


class _IssuesSmartTokens:
    """Grants mint through ``TokenIssuer`` (which needs the request's base URL), not authlib's generator."""

    request: SmartRequest
    server: SmartAuthorizationServer

    def generate_token(
        self,
        user: Subject | None = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict:
        return self.server.issuer.issue(
            base=self.request.base,
            client=self.request.client,
            subject=user,
            scope=scope or "",
            refresh=include_refresh_token,
        )


class SmartCodeGrant(_IssuesSmartTokens, grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS

    def validate_authorization_request(self) -> str:
        redirect_uri = super().validate_authorization_request()
        data = self.request.payload.data
        if (data.get("aud") or "").rstrip("/") != self.request.base:
            raise InvalidRequestError(f"'aud' must be this FHIR server: {self.request.base}", redirect_uri=redirect_uri)
        launch = data.get("launch")
        if launch is not None and self.server.state.get_temp(LAUNCH, launch, time.time()) is None:
            raise InvalidRequestError("Unknown or expired 'launch'", redirect_uri=redirect_uri)
        return redirect_uri

    def save_authorization_code(self, code: str, request: SmartRequest) -> None:
        subject: Subject = request.user
        data = request.payload.data
        doc = {
            "client_id": request.client.client_id,
            "redirect_uri": request.payload.redirect_uri,
            "code_challenge": data.get("code_challenge"),
            "code_challenge_method": data.get("code_challenge_method"),
            "nonce": data.get("nonce"),
            "subject": subject.to_doc(),
        }
        expires = time.time() + self.server.settings.authorization_code_lifetime
        self.server.state.put_temp(CODE, secret_id(code), doc, expires)

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        # Taken here, atomically, rather than deleted after issuing: two concurrent redemptions cannot
        # both succeed, and a failed redemption (wrong verifier) burns the code.
        doc, first = self.server.state.take_temp(CODE, secret_id(code), time.time())
        if doc is None or doc["client_id"] != client.client_id:
            return None
        if not first:  # RFC 6749 §4.1.2: a reused code revokes what it issued
            self.server.revoke_family(doc["subject"]["family"])
            return None
        return AuthorizationCode(doc)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        pass  # already taken by query_authorization_code

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Subject:
        return Subject.from_doc(authorization_code.doc["subject"])


class SmartRefreshGrant(_IssuesSmartTokens, grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def validate_token_request(self) -> None:
        client = self._validate_request_client()
        self.request.client = client
        token: RefreshTokenInfo = self._validate_request_token(client)
        requested = smart.split(self.request.payload.scope)
        if requested and not smart.is_subset(requested, smart.split(token.get_scope())):
            raise InvalidScopeError("The requested scope exceeds the original grant")
        if not self.server.state.use_refresh_token(secret_id(self.request.form["refresh_token"])):
            self.server.revoke_family(token.record["family"])  # lost a race with another use: a replay
            raise InvalidGrantError("The refresh token was already used")
        self.request.refresh_token = token

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshTokenInfo | None:
        record = self.server.state.get_refresh_token(secret_id(refresh_token))
        if record is None or record["revoked"]:
            return None
        if record["used"]:  # a rotated token presented again: stolen or replayed, end the family
            self.server.revoke_family(record["family"])
            return None
        info = RefreshTokenInfo(record, self.server.issuer)
        if info.is_expired():
            return None
        session = info.subject.session
        if record.get("online") and (
            session is None or self.server.state.get_temp(SESSION, session, time.time()) is None
        ):
            return None  # online_access ends with the login session
        return info

    def authenticate_user(self, refresh_token: RefreshTokenInfo) -> Subject:
        return refresh_token.subject

    def revoke_old_credential(self, refresh_token: RefreshTokenInfo) -> None:
        pass  # marked used by validate_token_request (rotation)


class SmartClientCredentialsGrant(_IssuesSmartTokens, grants.ClientCredentialsGrant):
    """SMART Backend Services: private_key_jwt only (``Client.check_endpoint_auth_method``), system scopes."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        scope = self.request.client.get_allowed_scope(self.request.payload.scope)
        if scope is None:
            raise InvalidScopeError("None of the requested scopes is allowed for this client")
        self.request.scope = scope

    def create_token_response(self):
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class SmartCodeChallenge(CodeChallenge):
    """PKCE: S256 only (SMART forbids ``plain``); mandatory for public clients, accepted for the others."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if grant.request.client.type == PUBLIC and not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256")
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        return super().validate_code_challenge(grant, redirect_uri)


class SmartOpenIDCode(OpenIDCode):
    """id_token on the code grant when ``openid`` was granted; signed by ``TokenIssuer``."""

    def __init__(self, issuer: TokenIssuer) -> None:
        super().__init__(require_nonce=False)
        self.issuer = issuer

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return False  # nonce replay is the relying party's check (OIDC Core §3.1.3.7)

    def encode_id_token(self, token: dict, request: SmartRequest) -> str:
        code: AuthorizationCode = request.authorization_code
        return self.issuer.id_token(
            base=request.base,
            client=request.client,
            subject=request.user,
            scope=token["scope"],
            nonce=code.get_nonce(),
            access_token=token["access_token"],
        )


class SmartIntrospection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def authenticate_token(self, request: SmartRequest, client: Client):
        self.check_params(request, client)
        return self.server.issuer.find(request.form["token"], request.base)

    def check_permission(self, token, client: Client, request: SmartRequest) -> bool:
        return client.type != PUBLIC  # resource servers and confidential apps; never a browser app

    def introspect_token(self, token: AccessTokenInfo | RefreshTokenInfo) -> dict:
        return token.introspection()


class SmartRevocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = TOKEN_AUTH_METHODS

    def authenticate_token(self, request: SmartRequest, client: Client):
        self.check_params(request, client)
        token = self.server.issuer.find(request.form["token"], request.base)
        if token is not None and not token.check_client(client):
            raise InvalidGrantError("The token was not issued to this client")
        return token

    def revoke_token(self, token: AccessTokenInfo | RefreshTokenInfo, request: SmartRequest) -> None:
        token.revoke()


class SmartAuthorizationServer(AuthorizationServer):
    """authlib's server for our framework: responses come back as (status, body, headers) tuples."""

    def __init__(self, settings: Settings, state: AuthState, issuer: TokenIssuer, jwks: JwksCache) -> None:
        super().__init__()
        self.settings = settings
        self.state = state
        self.issuer = issuer
        self.jwks = jwks
        self.professionals = issuer.professionals
        self.register_grant(SmartCodeGrant, [SmartCodeChallenge(required=True), SmartOpenIDCode(issuer)])
        self.register_grant(SmartRefreshGrant)
        self.register_grant(SmartClientCredentialsGrant)
        self.register_grant(ProfessionalJwtBearerGrant)
        self.register_client_auth_method("private_key_jwt", PrivateKeyJwtAuthentication(state, jwks))
        self.register_endpoint(SmartIntrospection)
        self.register_endpoint(SmartRevocation)

    def query_client(self, client_id: str) -> Client | None:
        doc = self.state.get_client(client_id)
        return Client.from_doc(doc) if doc is not None else None

    def save_token(self, token: dict, request: OAuth2Request) -> None:
        pass  # TokenIssuer stores what it issues

    def create_oauth2_request(self, request: SmartRequest) -> SmartRequest:
        if not isinstance(request, SmartRequest):
            raise TypeError("build a SmartRequest first")
        return request

    def create_json_request(self, request):
        raise NotImplementedError("no JSON endpoints")

    def handle_response(self, status: int, body, headers) -> tuple[int, object, list[tuple[str, str]]]:
        return status, body, list(headers)

    def send_signal(self, name: str, *args, **kwargs) -> None:
        pass

    def revoke_family(self, family: str) -> None:
        self.issuer.revoke_family(family)


def new_family() -> str:
    return uuid.uuid4().hex


JSON_HEADERS = default_json_headers

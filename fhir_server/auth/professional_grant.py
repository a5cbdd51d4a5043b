"""Professional software acting for a named health professional: the JWT bearer grant of RFC 7523 (§2.1).

The DMP's VIHF token, the OAuth way. A client registered as ``professional-software`` authenticates with
``private_key_jwt`` (as backend services do) and presents, as the grant, a second JWT signed by the same key that
names the PS and the access mode::

    grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer
    assertion=<JWT: iss=client id, sub=idNatPs, aud=token endpoint, exp (≤ 5 min), iat, jti,
                    access_mode?, justification?, fhirUser?>
    scope=user/*.rs …
    client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
    client_assertion=<the usual private_key_jwt client assertion>

Errors (RFC 6749 §5.2, RFC 7523 §3.1): client authentication → ``invalid_client`` (401); a client of another type
→ ``unauthorized_client``; an assertion that is malformed, unsigned (``alg: none``), not signed by the client's
keys, expired, for another audience, replayed, or names an unknown PS, a PS without (or with several) roles →
``invalid_grant``; scopes → ``invalid_scope``; a missing or superfluous justification → ``invalid_request``.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from authlib.oauth2.base import OAuth2Error, invalid_error_characters
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
    grants,
)
from joserfc import jws, jwt
from joserfc.errors import JoseError

from ..policy.codes import NORMAL, PURPOSE_OF_MODE
from ..policy.professional import UnknownProfessional
from ..security.principal import ACCESS_MODE_SCOPE
from . import scopes as smart
from .assertions import ALGORITHMS, LEEWAY, MAX_LIFETIME, audiences, verify_signed_by_client
from .clients import JWT_BEARER, Client
from .directory import ResolvedProfessional
from .professional_scopes import (
    ModeError,
    ScopeError,
    check_justification,
    check_regulation,
    has_data,
    professional_token,
    requested_mode,
)

if TYPE_CHECKING:
    from .oauth import SmartAuthorizationServer, SmartRequest

#: An idNatPs (RPPS ``8…``, ADELI ``0…``, and the other national prefixes): letters and digits, no search syntax.
_ID_NAT_PS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FHIR_USER = re.compile(r"^(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}$")
#: Not in this grant: no browser (launch context), no refresh token.
_NOT_HERE = frozenset({smart.LAUNCH, smart.LAUNCH_PATIENT, smart.LAUNCH_ENCOUNTER, smart.OFFLINE, smart.ONLINE})


def _text(description: str) -> str:
    """An error description in the characters RFC 6749 allows there (request text may carry others)."""
    return "".join("?" if invalid_error_characters(c) else c for c in description)


class ProfessionalJwtBearerGrant(grants.BaseGrant, grants.TokenEndpointMixin):
    GRANT_TYPE = JWT_BEARER
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    request: SmartRequest
    server: SmartAuthorizationServer

    def validate_token_request(self) -> None:
        try:
            client: Client = self.authenticate_token_endpoint_client()
        except InvalidClientError as exc:
            exc.status_code = 401  # RFC 6749 §5.2 allows it; RFC 7523 clients expect it
            raise
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(description="Only clients registered as professional software may use "
                                                      "the JWT bearer grant")  # fmt: skip
        self.request.client = client
        assertion = self.request.form.get("assertion")
        if not assertion:
            raise InvalidRequestError("Missing 'assertion': the signed JWT naming the professional")
        claims = self._verify_assertion(client, assertion)
        mode, justification, fhir_user = _assertion_request(claims)
        requested, scope_mode = self._requested_scope(client, mode)
        mode = mode or scope_mode or NORMAL
        if mode != NORMAL and f"{ACCESS_MODE_SCOPE}{mode}" not in client.scope:
            raise InvalidScopeError(f"This client is not registered for {ACCESS_MODE_SCOPE}{mode}")
        try:
            justification = check_justification(mode, justification)
            resolved = self._resolve(claims["sub"], fhir_user)
            check_regulation(mode, resolved)
            token = professional_token(
                requested,
                resolved,
                self.server.professionals.matrix,
                lifetime=self.server.settings.access_token_lifetime,
                mode=mode,
                justification=justification,
            )
        except ModeError as exc:
            raise OAuth2Error(description=_text(str(exc)), error=exc.error, status_code=400) from None
        except ScopeError as exc:
            raise InvalidScopeError(_text(str(exc))) from None
        if not has_data(token.scope):
            raise InvalidScopeError("None of the requested data scopes is open to this professional")
        self.request.professional = resolved
        self.request.professional_token = token

    def create_token_response(self) -> tuple[int, dict, list[tuple[str, str]]]:
        body = self.server.issuer.issue_professional(
            base=self.request.base,
            client=self.request.client,
            resolved=self.request.professional,
            token=self.request.professional_token,
        )
        return 200, body, self.TOKEN_RESPONSE_HEADER

    # --- the assertion -----------------------------------------------------------------------------------------
    def _verify_assertion(self, client: Client, assertion: str) -> dict:
        try:
            header = jws.extract_compact(assertion.encode()).headers()
        except (JoseError, ValueError, UnicodeError, TypeError):
            raise InvalidGrantError("The assertion is not a well-formed JWT") from None
        if header.get("alg") not in ALGORITHMS:  # "none" included: an unsigned assertion proves nothing
            raise InvalidGrantError("The assertion must be signed with RS384 or ES384 by the client's key")
        if "jku" in header and header["jku"] != client.jwks_url:
            raise InvalidGrantError("The assertion 'jku' is not the client's registered JWKS URL")
        claims = verify_signed_by_client(client, assertion, self.server.jwks, InvalidGrantError)
        registry = jwt.JWTClaimsRegistry(
            leeway=LEEWAY,
            iss={"essential": True, "value": client.client_id},
            sub={"essential": True},
            aud={"essential": True, "values": audiences(self.request)},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidGrantError(_text(f"Assertion: {exc.description}")) from None
        now = time.time()
        exp = claims["exp"]
        if not isinstance(exp, int | float) or exp > now + MAX_LIFETIME + LEEWAY:
            raise InvalidGrantError("The assertion 'exp' is more than 5 minutes ahead")
        if not isinstance(claims["sub"], str) or not _ID_NAT_PS.match(claims["sub"]):
            raise InvalidGrantError("The assertion 'sub' must be the professional's idNatPs")
        if not isinstance(claims["jti"], str):
            raise InvalidGrantError("The assertion 'jti' is not a string")
        if not self.server.state.remember_assertion(f"jwt-bearer:{client.client_id}:{claims['jti']}",
                                                    exp + LEEWAY, now):  # fmt: skip
            raise InvalidGrantError("The assertion 'jti' was already used")
        return claims

    # --- scopes, directory -------------------------------------------------------------------------------------
    def _requested_scope(self, client: Client, mode: str | None) -> tuple[str, str | None]:
        """The requested scopes the client may get (access-mode scopes kept for ``narrow``) and the mode they ask."""
        requested = smart.split(self.request.payload.scope)
        if not requested:
            raise InvalidScopeError("Request the data scopes (user/...) the professional needs")
        try:
            scope_mode = requested_mode(self.request.payload.scope)
        except ScopeError as exc:
            raise InvalidScopeError(_text(str(exc))) from None
        if mode is not None and scope_mode is not None and scope_mode != mode:
            raise InvalidRequestError(f"The assertion's access_mode ({mode}) and the scope "
                                      f"{ACCESS_MODE_SCOPE}{scope_mode} differ")  # fmt: skip
        for scope in requested:
            grant = smart.parse_clinical(scope)
            if grant is not None and grant.context not in smart.PROFESSIONAL_CONTEXTS:
                raise InvalidScopeError(_text(f"{scope}: professional software gets user/ scopes only"))
        data = [s for s in requested if not s.startswith(ACCESS_MODE_SCOPE) and s not in _NOT_HERE]
        kept = client.allowed_scopes(" ".join(data))
        if not any(smart.parse_clinical(s) is not None for s in kept):
            raise InvalidScopeError("None of the requested data scopes is allowed for this client")
        modes = [s for s in requested if s.startswith(ACCESS_MODE_SCOPE)]
        return smart.join([*kept, *modes]), scope_mode

    def _resolve(self, id_nat_ps: str, fhir_user: str | None) -> ResolvedProfessional:
        try:
            if fhir_user is None:
                return self.server.professionals.resolve(id_nat_ps=id_nat_ps)
            resolved = self.server.professionals.resolve(fhir_user=fhir_user)
        except UnknownProfessional as exc:
            raise InvalidGrantError(_text(f"Unknown professional: {exc}")) from None
        if resolved.professional.id_nat_ps != id_nat_ps:
            raise InvalidGrantError(f"{fhir_user} is not a role of the professional {id_nat_ps}")
        return resolved


def _assertion_request(claims: dict) -> tuple[str | None, object, str | None]:
    """The access mode, justification and fhirUser the assertion asks for (checked for shape only)."""
    mode = claims.get("access_mode")
    if mode is not None and (not isinstance(mode, str) or mode not in PURPOSE_OF_MODE):
        raise InvalidGrantError("The assertion 'access_mode' must be normal, centre_15 or bris_de_glace")
    fhir_user = claims.get("fhirUser")
    if fhir_user is not None and (not isinstance(fhir_user, str) or not _FHIR_USER.match(fhir_user)):
        raise InvalidGrantError("The assertion 'fhirUser' must be PractitionerRole/<id> (or Practitioner/<id>)")
    return mode, claims.get("justification"), fhir_user

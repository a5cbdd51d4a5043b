"""What the server publishes about itself: SMART configuration, OpenID configuration, OAuth URIs.

Every URL hangs off the FHIR base URL (``[base]/auth/…``), which is also the token issuer.
"""

from __future__ import annotations

from . import scopes as smart
from .clients import JWT_BEARER
from .keys import ALG

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
ASSERTION_ALGORITHMS = ["RS384", "ES384"]
GRANT_TYPES = ["authorization_code", "refresh_token", "client_credentials", JWT_BEARER]
CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-banner",
    "sso-openid-connect",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "authorize-post",
]


def endpoints(base: str) -> dict[str, str]:
    return {
        "authorize": f"{base}/auth/authorize",
        "token": f"{base}/auth/token",
        "introspect": f"{base}/auth/introspect",
        "revoke": f"{base}/auth/revoke",
        "userinfo": f"{base}/auth/userinfo",
        "jwks": f"{base}/auth/jwks",
        "launch": f"{base}/auth/launch",
        "register": f"{base}/auth/register",
    }


def smart_configuration(base: str) -> dict:
    """``/.well-known/smart-configuration`` (SMART App Launch 2.2 §conformance)."""
    urls = endpoints(base)
    return {
        "issuer": base,
        "jwks_uri": urls["jwks"],
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "registration_endpoint": urls["register"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "grant_types_supported": GRANT_TYPES,
        "scopes_supported": smart.SUPPORTED,
        "response_types_supported": ["code"],
        "introspection_endpoint": urls["introspect"],
        "revocation_endpoint": urls["revoke"],
        "userinfo_endpoint": urls["userinfo"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


def openid_configuration(base: str) -> dict:
    """``/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §3)."""
    urls = endpoints(base)
    return {
        "issuer": base,
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "userinfo_endpoint": urls["userinfo"],
        "registration_endpoint": urls["register"],
        "jwks_uri": urls["jwks"],
        "introspection_endpoint": urls["introspect"],
        "revocation_endpoint": urls["revoke"],
        "scopes_supported": smart.SUPPORTED,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": GRANT_TYPES,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALG],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "amr", "fhirUser", "name"],
        "ui_locales_supported": ["fr", "en"],
        "prompt_values_supported": ["none", "login", "consent"],
    }


def oauth_uris_extension(base: str) -> dict:
    """The CapabilityStatement ``rest.security`` extension SMART clients (e.g. fhirclient) read."""
    urls = endpoints(base)
    names = ("authorize", "token", "introspect", "revoke", "register")
    return {
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [{"url": name, "valueUri": urls[name]} for name in names],
    }


def security_element(base: str) -> dict:
    """``CapabilityStatement.rest.security`` when SMART authorization is on."""
    return {
        "extension": [oauth_uris_extension(base)],
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "description": f"SMART App Launch 2.2: see {base}/.well-known/smart-configuration. Health professionals' "
        f"software acts for a named professional with the JWT bearer grant (RFC 7523, {JWT_BEARER}); its tokens "
        "carry document scopes narrowed to the DMP habilitation matrix. Emergency access: request the scope "
        f"{' or '.join(smart.ACCESS_MODE_SCOPES)} with the data scopes (reads only, at most one hour; bris de glace "
        "needs a justification, centre_15 the regulation role).",
    }

"""The authorization server's building blocks: scopes, TOTP, passwords, registrations, language choice."""

from __future__ import annotations

import base64

import pytest

from fhir_server.auth import scopes as smart
from fhir_server.auth import totp
from fhir_server.auth.clients import BACKEND, CONFIDENTIAL, PUBLIC, ClientError, new_client
from fhir_server.auth.i18n import choose
from fhir_server.auth.passwords import hash_password, verify_client_secret, verify_password
from fhir_server.auth.users import UserError, new_user


# --- scopes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scope", "parsed"),
    [
        ("patient/Observation.rs", ("patient", "Observation", "rs", None)),
        ("user/*.cruds", ("user", "*", "cruds", None)),
        ("system/Patient.read", ("system", "Patient", "rs", None)),
        ("patient/*.write", ("patient", "*", "cud", None)),
        ("patient/*.*", ("patient", "*", "cruds", None)),
        ("patient/Observation.rs?category=laboratory", ("patient", "Observation", "rs", "category=laboratory")),
    ],
)
def test_parse_clinical(scope: str, parsed: tuple) -> None:
    found = smart.parse_clinical(scope)
    assert found is not None
    letters = "".join(p for p in "cruds" if p in found.permissions)
    assert (found.context, found.type, letters, found.query) == parsed


@pytest.mark.parametrize(
    "scope", ["patient/Observation.sr", "patient/Observation.rr", "doctor/*.rs", "patient/observation.rs",
              "patient/*.read?x=1", "patient/Observation.", "openid", "patient/Observation.x"],
)  # fmt: skip
def test_parse_clinical_refuses(scope: str) -> None:
    assert smart.parse_clinical(scope) is None


def test_allowed_scopes() -> None:
    registered = ["openid", "fhirUser", "offline_access", "patient/*.rs", "user/Observation.cruds"]
    requested = ["openid", "launch", "patient/Observation.rs", "patient/Observation.read", "patient/*.cruds",
                 "user/Observation.rs?category=vital-signs", "system/*.rs", "junk"]  # fmt: skip
    assert smart.allowed(requested, registered, smart.USER_CONTEXTS) == [
        "openid", "patient/Observation.rs", "patient/Observation.read", "user/Observation.rs?category=vital-signs"
    ]  # fmt: skip
    assert smart.allowed(["system/Patient.rs", "openid"], ["system/*.rs", "openid"], smart.SYSTEM_CONTEXTS) == [
        "system/Patient.rs"
    ]
    # a registered query only covers the same query
    assert smart.allowed(["patient/Observation.rs"], ["patient/Observation.rs?category=x"], smart.USER_CONTEXTS) == []


def test_subset_for_refresh() -> None:
    granted = ["openid", "patient/*.rs", "offline_access"]
    assert smart.is_subset(["patient/Observation.rs", "openid"], granted)
    assert smart.is_subset(["patient/Observation.read"], granted)
    assert not smart.is_subset(["patient/*.cruds"], granted)
    assert not smart.is_subset(["user/*.rs"], granted)
    assert not smart.is_subset(["fhirUser"], granted)


# --- TOTP (RFC 6238 appendix B, SHA-1 key, truncated to 6 digits) ------------------------------------
def test_totp_rfc6238_vectors() -> None:
    secret = base64.b32encode(b"12345678901234567890").decode()
    assert totp.code_at(secret, 59) == "287082"
    assert totp.code_at(secret, 1111111109) == "081804"
    assert totp.code_at(secret, 1234567890) == "005924"


def test_totp_window_and_format() -> None:
    secret = totp.new_secret()
    now = 1_700_000_000.0
    assert totp.matching_step(secret, totp.code_at(secret, now), now) == int(now // 30)
    assert totp.matching_step(secret, totp.code_at(secret, now - 30), now) == int(now // 30) - 1
    assert totp.matching_step(secret, totp.code_at(secret, now - 90), now) is None
    assert totp.matching_step(secret, "12345", now) is None and totp.matching_step(secret, "abcdef", now) is None
    uri = totp.provisioning_uri(secret, "zoé")
    assert uri.startswith("otpauth://totp/fhir-server%3Azo%C3%A9?") and f"secret={secret}" in uri


# --- passwords and secrets ------------------------------------------------------------------------------
def test_password_hashing() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$32768$8$1$") and "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("Correct horse", stored)
    assert not verify_password("correct horse", None)
    assert not verify_password("x", "md5$abc")
    assert hash_password("same") != hash_password("same")  # salted


# --- registrations --------------------------------------------------------------------------------------
def test_new_client_rules() -> None:
    client, secret = new_client("app", PUBLIC, redirect_uris=["https://app/cb"])
    assert secret is None and client.check_endpoint_auth_method("none", "token")
    assert "openid" in client.scope and client.check_grant_type("authorization_code")
    client, secret = new_client("conf", CONFIDENTIAL, redirect_uris=["https://app/cb"])
    assert secret and verify_client_secret(secret, client.secret_hash) and client.secret_hash != secret
    assert not client.check_endpoint_auth_method("none", "token")
    assert client.check_endpoint_auth_method("client_secret_basic", "token")
    jwks = {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}
    client, secret = new_client("svc", BACKEND, jwks=jwks)
    assert secret is None and client.scope == ["system/*.rs"] and client.check_grant_type("client_credentials")
    assert not client.check_grant_type("authorization_code") and not client.check_response_type("code")
    assert client.check_endpoint_auth_method("private_key_jwt", "token")
    assert not client.check_endpoint_auth_method("client_secret_basic", "token")
    for bad in (
        lambda: new_client("app", PUBLIC),  # no redirect URI
        lambda: new_client("app", PUBLIC, redirect_uris=["https://app/cb#frag"]),
        lambda: new_client("app", PUBLIC, redirect_uris=["/relative"]),
        lambda: new_client("svc", BACKEND),  # no keys
        lambda: new_client("svc", BACKEND, jwks=jwks, scope="patient/*.rs"),
        lambda: new_client("app", PUBLIC, redirect_uris=["https://app/cb"], scope="system/*.rs"),
        lambda: new_client("a b", PUBLIC, redirect_uris=["https://app/cb"]),
        lambda: new_client("app", "other", redirect_uris=["https://app/cb"]),
    ):
        with pytest.raises(ClientError):
            bad()


def test_new_user_rules() -> None:
    user = new_user("zoe", "long enough", fhir_user="Patient/zoe", patients=["lea", "lea"], with_totp=True)
    assert user.managed_patients == ["zoe", "lea"] and user.totp_secret and user.password.startswith("scrypt$")
    assert new_user("doc", "long enough", fhir_user="Practitioner/9").managed_patients is None
    assert new_user("mum", "long enough", fhir_user="RelatedPerson/4", patients=["kid"]).managed_patients == ["kid"]
    for bad in (
        lambda: new_user("zoe", "short", fhir_user="Patient/zoe"),
        lambda: new_user("zoe", "long enough", fhir_user="Observation/1"),
        lambda: new_user("zoe", "long enough", fhir_user="Patient/zoe", patients=["bad id"]),
        lambda: new_user("", "long enough", fhir_user="Patient/zoe"),
    ):
        with pytest.raises(UserError):
            bad()


# --- language -------------------------------------------------------------------------------------------
def test_language_choice() -> None:
    assert choose(None, None, None) == "fr"
    assert choose("en", None, "fr") == "en"
    assert choose(None, "de en", None) == "en"
    assert choose(None, None, "de-DE,en;q=0.5,fr;q=0.8") == "fr"
    assert choose(None, None, "en-US") == "en"
    assert choose(None, None, "en;q=0") == "fr"

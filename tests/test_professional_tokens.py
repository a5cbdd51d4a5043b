"""Tokens for health professionals (PS): the RFC 7523 JWT bearer grant of professional software, the habilitation
matrix as SMART scopes, emergency access modes, the authorization code flow of a professional user, the CLI.

The directory (Practitioner with idNatPs, PractitionerRole with its TRE_G15 profession) is written through the FHIR
API with a system token, as the registry feeds do; the app runs in-process (httpx + ASGITransport).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from test_auth_server import (
    BASE,
    PASSWORD,
    TOKEN_URL,
    Server,
    _jwks,
    answers,
    client_assertion,
    refresh,
    running,
    tokens_for,
)

from fhir_server.auth import create_auth_server
from fhir_server.auth.clients import ClientError, new_client
from fhir_server.auth.professional_scopes import REGULATION_CODE, REGULATION_SYSTEM, narrow
from fhir_server.cli import main
from fhir_server.config import Settings
from fhir_server.policy.codes import ID_NAT_PS, TRE_G15
from fhir_server.policy.matrix import HabilitationMatrix
from fhir_server.policy.professional import Professional
from fhir_server.store.base import StoreQuery

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MATRIX = HabilitationMatrix.load()
MEDECIN_DOCS = "user/DocumentReference.rs?type:not=ATTEST-RESID"

# idNatPs of the directory below
MED, DENT, PHARMA, OTHER, NOROLE, MULTI, NOPROF, SAMU = (
    "810000000010", "810000000040", "810000000021", "810000000091",
    "810000000001", "810000000002", "810000000003", "810000000015",
)  # fmt: skip


# --- the directory ------------------------------------------------------------------------------------------
def practitioner(id_: str, id_nat_ps: str) -> dict:
    return {"resourceType": "Practitioner", "id": id_, "identifier": [{"system": ID_NAT_PS, "value": id_nat_ps}]}


def role(id_: str, practitioner_id: str, profession: str | None, *extra: dict) -> dict:
    codes = [{"coding": [{"system": TRE_G15, "code": profession}]}] if profession else []
    codes += [{"coding": [coding]} for coding in extra]
    return {"resourceType": "PractitionerRole", "id": id_, "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner_id}"}, "code": codes}  # fmt: skip


REGULATION = {"system": REGULATION_SYSTEM, "code": REGULATION_CODE}
FONCTION = {"system": "https://mos.esante.gouv.fr/NOS/TRE_R21-Fonction/FHIR/TRE-R21-Fonction", "code": "FON-AU"}
DIRECTORY = [
    practitioner("med", MED), role("med-role", "med", "10"),
    practitioner("dent", DENT), role("dent-role", "dent", "40"),
    practitioner("pharma", PHARMA), role("pharma-role", "pharma", "21"),
    practitioner("other", OTHER), role("other-role", "other", "91"),  # a profession the matrix does not know
    practitioner("norole", NOROLE),
    practitioner("multi", MULTI), role("multi-a", "multi", "10"), role("multi-b", "multi", "60"),
    practitioner("noprof", NOPROF), role("noprof-role", "noprof", None, FONCTION),
    practitioner("samu", SAMU), role("samu-role", "samu", "10", REGULATION),
]  # fmt: skip


class PsServer:
    def __init__(self, server: Server) -> None:
        self.s = server
        self.http = server.http
        self.auth = server.auth
        self.key = RSAKey.generate_key(2048, parameters={"kid": "ps-rsa"})
        self.ec = ECKey.generate_key("P-384", parameters={"kid": "ps-ec"})
        system = self.auth.mint_access_token(client_id="feed", scope="system/*.cruds", audience=BASE)
        self.system = {"Authorization": f"Bearer {system}"}

    async def seed(self) -> None:
        for resource in DIRECTORY:
            url = f"/{resource['resourceType']}/{resource['id']}"
            headers = {**self.system, "Content-Type": "application/fhir+json"}
            response = await self.http.put(url, content=json.dumps(resource), headers=headers)
            assert response.status_code in (200, 201), response.text
        a = self.auth
        a.add_client("ehr", "professional-software", jwks=_jwks(self.key), name="Logiciel de cabinet")
        a.add_client("ehr-es", "professional-software", jwks=_jwks(self.ec), scope="user/*.rs user/Observation.cruds")
        a.add_user("drmed", PASSWORD, fhir_user="Practitioner/med")
        a.add_user("drmulti", PASSWORD, fhir_user="Practitioner/multi")  # two roles: the directory cannot say which

    async def token(
        self,
        scope: str = "user/*.rs",
        sub: str = MED,
        *,
        client_id: str = "ehr",
        key: RSAKey | ECKey | None = None,
        alg: str = "RS384",
        assertion: str | None = None,
        client_auth: str | None = None,
        **claims: object,
    ) -> httpx.Response:
        key = key or self.key
        data = {
            "grant_type": JWT_BEARER,
            "assertion": assertion or ps_assertion(client_id, sub, key, alg, **claims),
            "scope": scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": client_auth or client_assertion(client_id, key, alg),
        }
        return await self.http.post("/auth/token", data={k: v for k, v in data.items() if v is not None})

    async def granted(self, scope: str = "user/*.rs", sub: str = MED, **options: object) -> dict:
        response = await self.token(scope, sub, **options)
        assert response.status_code == 200, response.text
        return response.json()

    async def introspect(self, token: str) -> dict:
        data = {"token": token, "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": client_assertion("ehr", self.key, "RS384")}  # fmt: skip
        return (await self.http.post("/auth/introspect", data=data)).json()


def ps_assertion(
    client_id: str,
    sub: str,
    key: RSAKey | ECKey,
    alg: str = "RS384",
    *,
    aud: str = TOKEN_URL,
    exp_in: int = 120,
    jti: str | None = None,
    drop: tuple[str, ...] = (),
    **claims: object,
) -> str:
    now = int(time.time())
    body = {"iss": client_id, "sub": sub, "aud": aud, "exp": now + exp_in, "iat": now, "jti": jti or uuid.uuid4().hex}
    body.update({k.replace("fhir_user", "fhirUser"): v for k, v in claims.items()})
    for name in drop:
        body.pop(name, None)
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, body, key, algorithms=[alg])


def unsigned(claims: dict) -> str:
    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


@contextlib.asynccontextmanager
async def ps_running(store_url: str, **settings: object) -> AsyncIterator[PsServer]:
    async with running(store_url, **settings) as server:
        ps = PsServer(server)
        await ps.seed()
        yield ps


@pytest.fixture
async def ps(tmp_path: Path) -> AsyncIterator[PsServer]:
    async with ps_running(f"sqlite:///{tmp_path / 'fhir.db'}") as s:
        yield s


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


# --- narrowing, unit ------------------------------------------------------------------------------------------
def _ps(profession: str) -> Professional:
    return Professional("1", profession, "Practitioner/1", "PractitionerRole/1")


def test_narrow_per_profession() -> None:
    medecin = narrow("openid fhirUser user/*.rs", _ps("10"), MATRIX)
    assert medecin == f"openid fhirUser user/*.rs {MEDECIN_DOCS} user/Binary.rs"
    dentiste = narrow("user/DocumentReference.rs", _ps("40"), MATRIX)
    assert dentiste == MATRIX.document_scope("40", "user", "rs")
    assert dentiste.startswith("user/DocumentReference.rs?type=") and "80788-3" not in dentiste
    assert narrow("user/*.rs user/DocumentReference.rs", _ps("91"), MATRIX) == "user/*.rs"  # unknown profession
    assert narrow("user/*.rs user/Binary.rs", None, MATRIX) == "user/*.rs"  # unknown PS: no document scope
    # the request's own criteria are ANDed into the matrix's; v1 stays v1 outside the document scopes
    narrowed = narrow("user/DocumentReference.rs?category=x user/Patient.read", _ps("10"), MATRIX)
    assert narrowed.split() == [f"{MEDECIN_DOCS}&category=x", "user/Patient.read"]


def test_narrow_emergency_reads_only() -> None:
    narrowed = narrow("user/*.cruds user/Observation.cu user/Patient.read access-mode/centre_15", _ps("10"), MATRIX,
                      "bris_de_glace")  # fmt: skip
    assert narrowed.split() == ["user/*.rs", MEDECIN_DOCS, "user/Binary.rs", "user/Patient.read",
                                "access-mode/bris_de_glace"]  # fmt: skip


def test_professional_software_client_rules() -> None:
    jwks = {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}
    client, secret = new_client("ehr", "professional-software", jwks=jwks)
    assert secret is None and client.check_grant_type(JWT_BEARER) and not client.check_grant_type("client_credentials")
    assert not client.check_response_type("code") and client.check_endpoint_auth_method("private_key_jwt", "token")
    assert "access-mode/bris_de_glace" in client.scope and "user/*.cruds" in client.scope
    for bad in (
        lambda: new_client("ehr", "professional-software"),  # no keys
        lambda: new_client("ehr", "professional-software", jwks=jwks, scope="patient/*.rs"),
        lambda: new_client("ehr", "professional-software", jwks=jwks, scope="system/*.rs"),
        lambda: new_client("svc", "backend", jwks=jwks, scope="system/*.rs access-mode/centre_15"),
        lambda: new_client("app", "confidential", redirect_uris=["https://a/cb"], scope="access-mode/bris_de_glace"),
    ):
        with pytest.raises(ClientError):
            bad()


def test_dynamic_registration_of_professional_software() -> None:
    from fhir_server.auth.registration import RegistrationError, registration_options

    metadata = {"token_endpoint_auth_method": "private_key_jwt", "grant_types": [JWT_BEARER], "jwks": {"keys": []}}
    assert registration_options(metadata)[0] == "professional-software"
    with pytest.raises(RegistrationError):
        registration_options({**metadata, "grant_types": ["client_credentials", JWT_BEARER]})


# --- the grant ------------------------------------------------------------------------------------------------
async def test_discovery_lists_the_grant_and_the_emergency_scopes(ps: PsServer) -> None:
    config = (await ps.http.get("/.well-known/smart-configuration")).json()
    assert JWT_BEARER in config["grant_types_supported"]
    assert {"access-mode/centre_15", "access-mode/bris_de_glace"} <= set(config["scopes_supported"])
    security = (await ps.http.get("/metadata")).json()["rest"][0]["security"]
    assert "access-mode/centre_15" in security["description"] and "access-mode/bris_de_glace" in security["description"]


async def test_granted_scopes_per_profession(ps: PsServer) -> None:
    medecin = await ps.granted("openid fhirUser user/*.rs")
    assert medecin["scope"] == f"openid fhirUser user/*.rs {MEDECIN_DOCS} user/Binary.rs"
    assert medecin["token_type"] == "Bearer" and medecin["expires_in"] == 300 and "refresh_token" not in medecin
    dentiste = await ps.granted("user/DocumentReference.rs user/Binary.rs", DENT)
    assert dentiste["scope"] == f"{MATRIX.document_scope('40', 'user', 'rs')} user/Binary.rs"
    pharmacien = await ps.granted("user/*.rs", PHARMA)
    assert f"{MATRIX.document_scope('21', 'user', 'rs')} " in pharmacien["scope"] and "type=" in pharmacien["scope"]
    assert (await ps.granted("user/*.rs", OTHER))["scope"] == "user/*.rs"  # unknown profession: no document scope
    # only document scopes requested, none open to the profession: nothing to grant
    assert error(await ps.token("user/DocumentReference.rs", OTHER)) == (400, "invalid_scope")
    # scopes the client is not registered for are dropped (ES384 client: user/*.rs and Observation writes)
    es = await ps.granted("user/*.cruds user/Observation.cruds", key=ps.ec, alg="ES384", client_id="ehr-es")
    assert es["scope"] == "user/Observation.cruds"


async def test_the_token_carries_the_professional(ps: PsServer) -> None:
    body = await ps.granted("fhirUser user/*.rs")
    claims = ps.auth.verify_access_token(body["access_token"], BASE)
    assert claims["sub"] == MED and claims["client_id"] == "ehr" and claims["fhirUser"] == "PractitionerRole/med-role"
    assert claims["ps"] == {"idNatPs": MED, "profession": "10", "practitioner": "Practitioner/med",
                            "role": "PractitionerRole/med-role"}  # fmt: skip
    assert claims["purpose_of_use"] == "TREAT" and "justification" not in claims and claims["scope"] == body["scope"]
    info = await ps.introspect(body["access_token"])
    assert (
        info["active"] is True and info["ps"]["profession"] == "10" and info["fhirUser"] == "PractitionerRole/med-role"
    )
    # the resource server accepts it
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await ps.http.get("/Practitioner?_count=1", headers=headers)).status_code == 200
    assert (await ps.http.get("/DocumentReference", headers=headers)).status_code == 200


async def test_several_roles_need_the_role(ps: PsServer) -> None:
    assert error(await ps.token(sub=MULTI)) == (400, "invalid_grant")
    body = await ps.granted(sub=MULTI, fhir_user="PractitionerRole/multi-b")
    claims = ps.auth.verify_access_token(body["access_token"], BASE)
    assert claims["fhirUser"] == "PractitionerRole/multi-b" and claims["ps"]["profession"] == "60"
    # a role of another professional
    assert error(await ps.token(sub=MULTI, fhir_user="PractitionerRole/med-role")) == (400, "invalid_grant")
    assert error(await ps.token(sub=MULTI, fhir_user="Patient/x")) == (400, "invalid_grant")


async def test_directory_refusals(ps: PsServer) -> None:
    for sub in ("810999999999", NOROLE, NOPROF, "81000,0010", "x|y"):
        assert error(await ps.token(sub=sub)) == (400, "invalid_grant"), sub


async def test_assertion_refusals(ps: PsServer) -> None:
    now = int(time.time())
    claims = {"iss": "ehr", "sub": MED, "aud": TOKEN_URL, "exp": now + 60, "iat": now, "jti": uuid.uuid4().hex}
    assert error(await ps.token(assertion=unsigned(claims))) == (400, "invalid_grant")
    other = RSAKey.generate_key(2048, parameters={"kid": "ps-rsa"})
    forged = ps_assertion("ehr", MED, other)
    assert error(await ps.token(assertion=forged)) == (400, "invalid_grant")  # the client authenticated, not the grant
    assert error(await ps.token(exp_in=-120)) == (400, "invalid_grant")  # expired
    assert error(await ps.token(exp_in=3600)) == (400, "invalid_grant")  # more than 5 minutes
    assert error(await ps.token(aud="https://elsewhere/token")) == (400, "invalid_grant")
    assert error(await ps.token(drop=("iat",))) == (400, "invalid_grant")
    assert error(await ps.token(drop=("jti",))) == (400, "invalid_grant")
    assert error(await ps.token(assertion=ps_assertion("ehr-es", MED, ps.key))) == (400, "invalid_grant")  # iss
    assert error(await ps.token(assertion=ps_assertion("ehr", MED, ps.key, "RS256"))) == (400, "invalid_grant")
    assert error(await ps.token(assertion="not.a.jwt")) == (400, "invalid_grant")
    jti = uuid.uuid4().hex
    assert (await ps.token(jti=jti)).status_code == 200
    assert error(await ps.token(jti=jti)) == (400, "invalid_grant")  # replayed
    assert error(await ps.token(access_mode="urgence")) == (400, "invalid_grant")
    response = await ps.http.post("/auth/token", data={"grant_type": JWT_BEARER, "scope": "user/*.rs",
                                  "client_assertion_type": CLIENT_ASSERTION_TYPE,
                                  "client_assertion": client_assertion("ehr", ps.key, "RS384")})  # fmt: skip
    assert error(response) == (400, "invalid_request")  # no assertion


async def test_client_refusals(ps: PsServer) -> None:
    # no client authentication, a client assertion signed by another key: invalid_client, 401
    response = await ps.http.post("/auth/token", data={"grant_type": JWT_BEARER, "scope": "user/*.rs",
                                  "assertion": ps_assertion("ehr", MED, ps.key), "client_id": "ehr"})  # fmt: skip
    assert error(response) == (401, "invalid_client")
    other = RSAKey.generate_key(2048, parameters={"kid": "ps-rsa"})
    assert error(await ps.token(client_auth=client_assertion("ehr", other, "RS384"))) == (401, "invalid_client")
    # a backend service (or a confidential app) is not professional software
    assert error(await ps.token(client_id="backend", key=ps.s.rsa)) == (400, "unauthorized_client")
    assert error(await ps.token(client_id="ehr", key=ps.s.rsa)) == (401, "invalid_client")  # not its key


async def test_scope_refusals(ps: PsServer) -> None:
    assert error(await ps.token("patient/*.rs")) == (400, "invalid_scope")
    assert error(await ps.token("user/*.rs system/*.rs")) == (400, "invalid_scope")
    assert error(await ps.token("openid fhirUser")) == (400, "invalid_scope")  # no data scope
    assert error(await ps.token("")) == (400, "invalid_scope")
    assert error(await ps.token("user/*.rs access-mode/bris_de_glace access-mode/centre_15")) == (400, "invalid_scope")
    assert error(await ps.token("user/*.rs access-mode/urgence")) == (400, "invalid_scope")
    # the ES client is not registered for emergency modes
    response = await ps.token("user/*.rs access-mode/bris_de_glace", key=ps.ec, alg="ES384", client_id="ehr-es",
                              justification="arrêt cardiaque")  # fmt: skip
    assert error(response) == (400, "invalid_scope")
    # launch and refresh scopes have no place in this grant: dropped
    assert (await ps.granted("user/Patient.rs offline_access launch/patient"))["scope"] == "user/Patient.rs"


# --- emergency modes ------------------------------------------------------------------------------------------
async def test_bris_de_glace(ps: PsServer) -> None:
    body = await ps.granted("user/*.cruds user/Observation.cu", access_mode="bris_de_glace",
                            justification="  patient inconscient aux urgences ")  # fmt: skip
    assert body["scope"] == f"user/*.rs {MEDECIN_DOCS} user/Binary.rs access-mode/bris_de_glace"
    claims = ps.auth.verify_access_token(body["access_token"], BASE)
    assert claims["justification"] == "patient inconscient aux urgences" and claims["purpose_of_use"] == "BTG"
    assert body["expires_in"] == 300  # the normal lifetime is shorter than the cap
    headers = {"Authorization": f"Bearer {body['access_token']}", "Content-Type": "application/fhir+json"}
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert (await ps.http.post("/Observation", content=json.dumps(observation), headers=headers)).status_code == 403
    # the mode asked by its scope alone
    body = await ps.granted("user/*.rs access-mode/bris_de_glace", justification="détresse respiratoire")
    assert body["scope"].endswith("access-mode/bris_de_glace")
    # refusals: no justification, an empty one, a mode that differs from the scope's
    assert error(await ps.token(access_mode="bris_de_glace")) == (400, "invalid_request")
    assert error(await ps.token(access_mode="bris_de_glace", justification="  ")) == (400, "invalid_request")
    assert error(await ps.token("user/*.rs access-mode/bris_de_glace")) == (400, "invalid_request")
    response = await ps.token("user/*.rs access-mode/centre_15", access_mode="bris_de_glace", justification="x")
    assert error(response) == (400, "invalid_request")
    # a justification outside bris de glace is refused, not ignored
    assert error(await ps.token(justification="pourquoi pas")) == (400, "invalid_request")
    assert error(await ps.token(sub=SAMU, access_mode="centre_15", justification="x")) == (400, "invalid_request")


async def test_centre_15_needs_the_regulation_role(ps: PsServer) -> None:
    body = await ps.granted("user/*.rs", SAMU, access_mode="centre_15")
    assert body["scope"] == f"user/*.rs {MEDECIN_DOCS} user/Binary.rs access-mode/centre_15"
    claims = ps.auth.verify_access_token(body["access_token"], BASE)
    assert claims["purpose_of_use"] == "ETREAT" and "justification" not in claims
    assert error(await ps.token("user/*.rs access-mode/centre_15", MED)) == (400, "invalid_scope")
    assert error(await ps.token("user/*.rs", DENT, access_mode="centre_15")) == (400, "invalid_scope")


async def test_emergency_lifetime_is_capped(tmp_path: Path) -> None:
    async with ps_running(f"sqlite:///{tmp_path / 'fhir.db'}", access_token_lifetime=7200) as ps:
        assert (await ps.granted())["expires_in"] == 7200
        body = await ps.granted(access_mode="bris_de_glace", justification="coma")
        claims = ps.auth.verify_access_token(body["access_token"], BASE)
        assert body["expires_in"] == 3600 and claims["exp"] - claims["iat"] == 3600


# --- a professional user (authorization code flow) --------------------------------------------------------------
async def test_code_flow_narrows_a_professional_users_scopes(ps: PsServer) -> None:
    scope = "openid fhirUser offline_access user/*.rs"
    body = await tokens_for(ps.s, answers("drmed"), scope=scope)
    assert body["scope"] == f"openid fhirUser offline_access user/*.rs {MEDECIN_DOCS} user/Binary.rs"
    claims = ps.auth.verify_access_token(body["access_token"], BASE)
    assert claims["fhirUser"] == "Practitioner/med" and claims["ps"]["role"] == "PractitionerRole/med-role"
    assert claims["purpose_of_use"] == "TREAT"
    # refresh narrows again (the directory or the matrix may have changed since)
    refreshed = await refresh(ps.s, body["refresh_token"])
    assert refreshed.status_code == 200 and refreshed.json()["scope"] == body["scope"]
    # a fhirUser the directory does not know (or cannot resolve to one role): no document scope, no error
    for user in ("doc", "drmulti"):
        scope = "openid fhirUser user/*.rs user/DocumentReference.rs"
        other = await tokens_for(ps.s, answers(user), scope=scope, prompt="login")
        assert other["scope"] == "openid fhirUser user/*.rs"
        assert "ps" not in ps.auth.verify_access_token(other["access_token"], BASE)
    # a patient's token is untouched
    patient = await tokens_for(ps.s, answers("solo"), scope="openid patient/*.rs launch/patient", prompt="login")
    assert patient["scope"] == "openid patient/*.rs launch/patient"


# --- the command line --------------------------------------------------------------------------------------------
async def _seed(url: str) -> None:
    async with ps_running(url):
        pass


def test_cli_professional_token(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FHIR_SERVER_AUTH_STATE", "FHIR_SERVER_BASE_URL", "FHIR_SERVER_HABILITATION_MATRIX"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'fhir.db'}"
    asyncio.run(_seed(url))

    key = RSAKey.generate_key(2048, parameters={"kid": "cli"})
    (tmp_path / "ehr.jwks.json").write_text(json.dumps(_jwks(key)))
    argv = ["clients", "add", "ehr2", "--type", "professional-software", "--jwks", str(tmp_path / "ehr.jwks.json")]
    assert main([*argv, "--store", url]) == 0 and "(professional-software) saved" in capsys.readouterr().err

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["token", "--client", "ehr", "--aud", BASE, "--store", url, *argv])
        out, err = capsys.readouterr()
        return code, out.strip(), err

    code, token, err = run("--scope", "user/*.rs", "--ps", MED)
    assert code == 0, err
    assert f"granted scope: user/*.rs {MEDECIN_DOCS} user/Binary.rs" in err
    auth = create_auth_server(Settings(store=url), url)
    auth.start_sync()
    try:
        claims = auth.verify_access_token(token, BASE)
        assert claims["sub"] == MED and claims["fhirUser"] == "PractitionerRole/med-role"
        assert claims["ps"]["profession"] == "10" and claims["purpose_of_use"] == "TREAT"
        emergency = ("--access-mode", "bris_de_glace", "--justification", "inconscient", "--lifetime", "7200")
        code, token, err = run("--scope", "user/*.cruds", "--ps", MULTI, "--ps-role", "PractitionerRole/multi-a",
                               *emergency)  # fmt: skip
        assert code == 0, err
        claims = auth.verify_access_token(token, BASE)
        assert claims["scope"] == f"user/*.rs {MEDECIN_DOCS} user/Binary.rs access-mode/bris_de_glace"
        assert claims["exp"] - claims["iat"] == 3600 and claims["justification"] == "inconscient"
        assert claims["purpose_of_use"] == "BTG"
        code, token, err = run("--scope", "user/*.rs", "--ps", SAMU, "--access-mode", "centre_15")
        assert code == 0 and auth.verify_access_token(token, BASE)["purpose_of_use"] == "ETREAT"
    finally:
        auth.close_sync()
    for argv in (
        ("--scope", "user/*.rs", "--ps", "810999999999"),  # unknown
        ("--scope", "user/*.rs", "--ps", NOROLE),
        ("--scope", "user/*.rs", "--ps", MULTI),  # several roles
        ("--scope", "user/*.rs", "--ps", MED, "--ps-role", "PractitionerRole/multi-a"),  # another's role
        ("--scope", "user/*.rs", "--ps", MED, "--access-mode", "bris_de_glace"),  # no justification
        ("--scope", "user/*.rs", "--ps", MED, "--justification", "x"),  # justification in normal mode
        ("--scope", "user/*.rs", "--ps", MED, "--access-mode", "centre_15"),  # no regulation role
        ("--scope", "system/*.rs", "--ps", MED),
        ("--scope", "user/*.rs", "--justification", "x"),  # without --ps
    ):
        code, out, err = run(*argv)
        assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, (argv, err)


# --- the trace of issuance (issue 11) ----------------------------------------------------------------------------
async def _login_events(ps: PsServer) -> list[dict]:
    store = ps.s.app.state.context.store
    events = [json.loads(v.body) for v in await store.search(StoreQuery("AuditEvent"), 1000)]
    return sorted((e for e in events if e["type"]["code"] == "110114"), key=lambda e: e["recorded"])


async def test_every_token_issued_or_refused_is_traced(store_url: str) -> None:
    async with ps_running(store_url) as ps:
        await _every_token_issued_or_refused_is_traced(ps)


async def _every_token_issued_or_refused_is_traced(ps: PsServer) -> None:
    why = "Patient inconscient, régulation SAMU"
    body = await ps.granted("user/*.rs access-mode/bris_de_glace", justification=why)
    assert error(await ps.token(sub="810999999999")) == (400, "invalid_grant")
    issued, refused = await _login_events(ps)
    assert issued["outcome"] == "0" and issued["subtype"][0]["code"] == "110122"
    person = issued["agent"][0]
    assert person["who"]["identifier"]["value"] == MED and person["role"][0]["coding"][0]["code"] == "10"
    assert person["policy"] == [ps.auth.verify_access_token(body["access_token"], BASE)["jti"]]
    assert {c["code"] for c in issued["purposeOfEvent"][0]["coding"]} == {"BTG", "bris_de_glace"}
    assert issued["purposeOfEvent"][0]["text"] == why
    assert refused["outcome"] == "4" and "invalid_grant" in refused["outcomeDesc"]
    assert refused["agent"][0]["who"]["identifier"]["value"] in ("ehr", "unknown client")
    for event in (issued, refused):  # never a token, an assertion or a secret
        text = json.dumps(event)
        assert body["access_token"] not in text and "assertion" not in text and "eyJ" not in text

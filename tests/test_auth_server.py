"""The SMART authorization server end to end: HTML forms, token endpoint, backend services, tokens.

Each test drives the real app (``create_app`` with auth on) through httpx + ASGITransport, filling the
server-rendered forms the way a browser would (hidden fields parsed from the HTML).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from fhir_server.app import create_app
from fhir_server.auth import AuthServer, InvalidToken, totp
from fhir_server.auth import assertions as assertions_module
from fhir_server.auth.state import CODE, secret_id
from fhir_server.config import Settings

BASE = "http://testserver"
TOKEN_URL = f"{BASE}/auth/token"
REDIRECT = "https://app.example/cb"
APP_SCOPE = "openid fhirUser profile launch launch/patient online_access offline_access patient/*.rs user/*.rs"
PASSWORD = "correct horse battery"


# --- the app ----------------------------------------------------------------------------------------
class Server:
    def __init__(self, client: httpx.AsyncClient, auth: AuthServer, app: object) -> None:
        self.http = client
        self.auth = auth
        self.app = app
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
        self.ec = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})

    def register(self) -> None:
        a = self.auth
        a.add_client("app", "public", redirect_uris=[REDIRECT], scope=APP_SCOPE, name="Carnet santé")
        self.conf_secret = a.add_client("conf", "confidential", redirect_uris=[REDIRECT], scope=APP_SCOPE)
        a.add_client("ehr", "confidential", redirect_uris=[REDIRECT], jwks=_jwks(self.rsa), scope=APP_SCOPE)
        a.add_client("backend", "backend", jwks=_jwks(self.rsa), scope="system/*.rs")
        a.add_client("backend-es", "backend", jwks=_jwks(self.ec), scope="system/Patient.rs system/Observation.rs")
        a.add_user("zoe", PASSWORD, fhir_user="Patient/zoe", patients=["lea", "tom"], name="Zoé Lefèvre")
        a.add_user("solo", PASSWORD, fhir_user="Patient/solo")
        a.add_user("doc", PASSWORD, fhir_user="Practitioner/9")
        self.totp_secret = a.add_user("otp", PASSWORD, fhir_user="Patient/otp", with_totp=True).totp_secret


def _jwks(key: RSAKey | ECKey) -> dict:
    return {"keys": [key.as_dict(private=False)]}


@contextlib.asynccontextmanager
async def running(store_url: str, **settings: object) -> AsyncIterator[Server]:
    settings = {"store": store_url, "auth": True, "load_definitions": False, "base_url": BASE, **settings}
    app = create_app(Settings(**settings))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        server = Server(client, app.state.auth, app)
        server.register()
        yield server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running(f"sqlite:///{tmp_path / 'fhir.db'}") as s:
        yield s


# --- a browser ----------------------------------------------------------------------------------------
class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "inputs": []})
        elif tag in ("input", "button") and self.forms:
            self.forms[-1]["inputs"].append(a)


def parse_form(html: str) -> dict:
    parser = _Forms()
    parser.feed(html)
    assert parser.forms, html
    form = parser.forms[0]
    form["hidden"] = {i["name"]: i.get("value") or "" for i in form["inputs"] if i.get("type") == "hidden"}
    return form


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def authorize_params(client_id: str = "app", scope: str = APP_SCOPE, challenge: str | None = None, **extra) -> dict:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "st-123",
        "aud": BASE,
        "nonce": "n-456",
    }
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


Answer = Callable[[str, dict], dict]


def answers(username: str = "solo", password: str = PASSWORD, **by_step: dict | Callable[[dict], dict]) -> Answer:
    """What the user types at each step (login by default; consent approves everything ticked)."""

    def answer(step: str, form: dict) -> dict:
        if step in by_step:
            given = by_step[step]
            return given(form) if callable(given) else given
        if step == "login":
            return {"username": username, "password": password}
        if step == "consent":
            ticked = [i["value"] for i in form["inputs"] if i.get("name") == "scope" and "checked" in i]
            return {"scope": ticked, "action": "allow"}
        raise AssertionError(f"unexpected step {step}")

    return answer


async def drive(http: httpx.AsyncClient, response: httpx.Response, answer: Answer) -> httpx.Response:
    """Follow redirects and fill forms until the server redirects to the app (or shows a non-form page)."""
    for _ in range(20):
        if response.status_code in (302, 303):
            location = response.headers["location"]
            if location.startswith(REDIRECT):
                return response
            response = await http.get(location)
            continue
        if "<form" not in response.text:
            return response
        form = parse_form(response.text)
        fields = {**form["hidden"], **answer(form["hidden"]["step"], form)}
        response = await http.post(form["action"], data=fields)
        if response.status_code >= 400:
            return response
    raise AssertionError("the flow did not finish")


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def get_code(s: Server, answer: Answer | None = None, **params) -> tuple[str, str]:
    """Run the browser part; returns (code, verifier)."""
    verifier, challenge = pkce()
    response = await s.http.get("/auth/authorize", params=authorize_params(challenge=challenge, **params))
    result = redirect_params(await drive(s.http, response, answer or answers()))
    assert result["state"] == "st-123"
    return result["code"], verifier


async def exchange(s: Server, code: str, verifier: str | None, client_id: str = "app", **extra) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": client_id}
    if verifier:
        data["code_verifier"] = verifier
    data.update(extra)
    return await s.http.post("/auth/token", data={k: v for k, v in data.items() if v is not None})


async def tokens_for(s: Server, answer: Answer | None = None, **params) -> dict:
    code, verifier = await get_code(s, answer, **params)
    response = await exchange(s, code, verifier, client_id=params.get("client_id", "app"))
    assert response.status_code == 200, response.text
    return response.json()


def client_assertion(client_id: str, key: RSAKey | ECKey, alg: str, *, aud: str = TOKEN_URL, exp_in: int = 120,
                     jti: str | None = None) -> str:  # fmt: skip
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + exp_in, "jti": jti or uuid.uuid4().hex}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


async def backend_token(s: Server, client_id: str, key: RSAKey | ECKey, alg: str, scope: str = "system/*.rs",
                        **options) -> httpx.Response:  # fmt: skip
    data = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": options.pop("assertion", None) or client_assertion(client_id, key, alg, **options),
    }
    return await s.http.post("/auth/token", data=data)


async def jwks_keyset(s: Server) -> KeySet:
    return KeySet.import_key_set((await s.http.get("/auth/jwks")).json())


# --- discovery ------------------------------------------------------------------------------------------
async def test_smart_configuration(server: Server) -> None:
    response = await server.http.get("/.well-known/smart-configuration")
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"
    config = response.json()
    assert config["issuer"] == BASE and config["token_endpoint"] == TOKEN_URL
    assert config["authorization_endpoint"] == f"{BASE}/auth/authorize"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert set(config["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post", "private_key_jwt"
    }  # fmt: skip
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    for capability in ("launch-ehr", "launch-standalone", "client-public", "client-confidential-asymmetric",
                       "sso-openid-connect", "permission-v2", "permission-offline", "authorize-post"):  # fmt: skip
        assert capability in config["capabilities"]
    oidc = (await server.http.get("/.well-known/openid-configuration")).json()
    assert oidc["issuer"] == BASE and "RS256" in oidc["id_token_signing_alg_values_supported"]
    keys = (await server.http.get("/auth/jwks")).json()["keys"]
    assert len(keys) == 1 and keys[0]["kid"] and keys[0]["alg"] == "RS256" and "d" not in keys[0]


async def test_capability_statement_security() -> None:
    import json

    from fhir_server.interactions.capabilities import capability_statement

    rest = json.loads(capability_statement(BASE, smart=True))["rest"][0]
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in rest["security"]["extension"][0]["extension"]}
    assert uris["authorize"] == f"{BASE}/auth/authorize" and uris["token"] == TOKEN_URL
    assert "security" not in json.loads(capability_statement(BASE))["rest"][0]


# --- authorization code + PKCE through the pages -------------------------------------------------------
@pytest.mark.parametrize("store", ["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
async def test_standalone_launch_with_patient_picker(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'fhir.db'}" if store == "sqlite" else request.getfixturevalue("mongo_url")
    async with running(url) as s:
        seen: list[str] = []

        def pick(form: dict) -> dict:
            seen.extend(i["value"] for i in form["inputs"] if i.get("name") == "patient")
            return {"patient": "lea"}

        def consent(form: dict) -> dict:
            ticked = [i["value"] for i in form["inputs"] if i.get("name") == "scope" and "checked" in i]
            return {"scope": [t for t in ticked if t != "user/*.rs"], "action": "allow"}  # untick one

        body = await tokens_for(s, answers("zoe", patient=pick, consent=consent))
        assert seen == ["zoe", "lea", "tom"]
        assert body["token_type"] == "Bearer" and body["expires_in"] == 300 and body["patient"] == "lea"
        assert body["need_patient_banner"] is True and body["refresh_token"]
        assert "user/*.rs" not in body["scope"].split() and "patient/*.rs" in body["scope"].split()
        assert "openid" in body["scope"].split()  # mandatory: cannot be unticked
        claims = s.auth.verify_access_token(body["access_token"], BASE)
        assert claims["sub"] == "zoe" and claims["client_id"] == "app" and claims["patient"] == "lea"
        assert claims["fhirUser"] == "Patient/zoe" and claims["managed_patients"] == ["zoe", "lea", "tom"]
        assert claims["iss"] == BASE and claims["aud"] == BASE and claims["scope"] == body["scope"]
        assert not s.auth.is_revoked(claims["jti"])
        # the id_token, verified against the published JWKS
        id_token = jwt.decode(body["id_token"], await jwks_keyset(s), algorithms=["RS256"])
        assert id_token.header["kid"] and id_token.claims["aud"] == "app" and id_token.claims["iss"] == BASE
        assert id_token.claims["nonce"] == "n-456" and id_token.claims["fhirUser"] == f"{BASE}/Patient/zoe"
        assert id_token.claims["sub"] == "zoe" and id_token.claims["name"] == "Zoé Lefèvre"
        assert id_token.claims["at_hash"]
        with pytest.raises(InvalidToken):  # an id_token is never an access token
            s.auth.verify_access_token(body["id_token"], BASE)


async def test_single_patient_skips_picker_and_userinfo(server: Server) -> None:
    body = await tokens_for(server, answers("solo"))
    assert body["patient"] == "solo"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    info = (await server.http.get("/auth/userinfo", headers=headers)).json()
    assert info == {"sub": "solo", "fhirUser": f"{BASE}/Patient/solo"}
    assert (await server.http.get("/auth/userinfo")).status_code == 401


async def test_practitioner_names_an_existing_patient(server: Server) -> None:
    from fhir_server.interactions import crud

    verifier, challenge = pkce()
    response = await server.http.get("/auth/authorize", params=authorize_params(challenge=challenge))
    response = await drive(server.http, response, answers("doc", patient={"patient": "p1"}))
    assert response.status_code == 400 and 'role="alert"' in response.text  # no Patient p1 yet
    await crud.update(server.app.state.context, "Patient", "p1", {"resourceType": "Patient", "id": "p1"})
    form = parse_form(response.text)
    response = await server.http.post(form["action"], data={**form["hidden"], "patient": "p1"})
    code = redirect_params(await drive(server.http, response, answers("doc")))["code"]
    body = (await exchange(server, code, verifier)).json()
    claims = server.auth.verify_access_token(body["access_token"], BASE)
    assert body["patient"] == "p1" and claims["fhirUser"] == "Practitioner/9" and "managed_patients" not in claims


async def test_confidential_client_secret_basic_and_post(server: Server) -> None:
    code, verifier = await get_code(server, client_id="conf")
    auth = httpx.BasicAuth("conf", server.conf_secret)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    response = await server.http.post("/auth/token", data=data, auth=auth)
    assert response.status_code == 200, response.text
    code, verifier = await get_code(server, client_id="conf")
    response = await exchange(server, code, verifier, "conf", client_secret=server.conf_secret)
    assert response.status_code == 200
    code, verifier = await get_code(server, client_id="conf")
    response = await exchange(server, code, verifier, "conf", client_secret="wrong")
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"
    code, verifier = await get_code(server, client_id="conf")
    response = await exchange(server, code, verifier, "conf")  # no authentication at all
    assert response.json()["error"] == "invalid_client"


async def test_confidential_asymmetric_client(server: Server) -> None:
    code, verifier = await get_code(server, client_id="ehr")
    assertion = client_assertion("ehr", server.rsa, "RS384")
    response = await exchange(
        server, code, verifier, None,  # type: ignore[arg-type]
        client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer", client_assertion=assertion,
    )  # fmt: skip
    assert response.status_code == 200, response.text


async def test_authorize_post(server: Server) -> None:
    verifier, challenge = pkce()
    response = await server.http.post("/auth/authorize", data=authorize_params(challenge=challenge))
    code = redirect_params(await drive(server.http, response, answers("solo")))["code"]
    assert (await exchange(server, code, verifier)).status_code == 200


async def test_ehr_launch(server: Server) -> None:
    backend = (await backend_token(server, "backend", server.rsa, "RS384")).json()
    headers = {"Authorization": f"Bearer {backend['access_token']}"}
    created = await server.http.post("/auth/launch", json={"patient": "tom", "encounter": "enc-1"}, headers=headers)
    assert created.status_code == 201, created.text
    launch = created.json()["launch"]
    body = await tokens_for(server, answers("doc"), scope="launch openid fhirUser patient/*.rs", launch=launch)
    assert body["patient"] == "tom" and body["encounter"] == "enc-1" and body["need_patient_banner"] is False
    claims = server.auth.verify_access_token(body["access_token"], BASE)
    assert claims["patient"] == "tom" and claims["encounter"] == "enc-1" and claims["fhirUser"] == "Practitioner/9"
    assert "refresh_token" not in body  # neither offline_access nor online_access
    # the CLI's way: a guardian launched into a child's record
    cli_launch = server.auth.create_launch("lea")
    assert (await tokens_for(server, answers("zoe"), scope="launch patient/*.rs", launch=cli_launch))[
        "patient"
    ] == "lea"
    # refusals: a patient launched into a record they do not manage; a launch bound to another user
    for launch_id, user in (
        (server.auth.create_launch("tom"), "solo"),
        (server.auth.create_launch("x", user="doc"), "zoe"),
    ):
        query = authorize_params(challenge=pkce()[1], scope="launch patient/*.rs", launch=launch_id, prompt="login")
        response = await drive(server.http, await server.http.get("/auth/authorize", params=query), answers(user))
        assert response.status_code == 403
    response = await server.http.get("/auth/authorize", params=authorize_params(challenge=pkce()[1], launch="nope"))
    assert redirect_params(response)["error"] == "invalid_request"
    public = await tokens_for(server, answers("solo"), prompt="login")
    headers = {"Authorization": f"Bearer {public['access_token']}"}
    assert (await server.http.post("/auth/launch", json={"patient": "x"}, headers=headers)).status_code == 403
    assert (await server.http.post("/auth/launch", json={"patient": "x"})).status_code == 401


async def test_language_and_page_safety(server: Server) -> None:
    async def first_page(headers: dict | None = None, **params: str) -> httpx.Response:
        query = authorize_params(challenge=pkce()[1], **params)
        return await server.http.get("/auth/authorize", params=query, headers=headers, follow_redirects=True)

    response = await first_page()
    assert '<html lang="fr">' in response.text and "Mot de passe" in response.text
    assert 'for="password"' in response.text and 'autocomplete="current-password"' in response.text
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    cookie = response.history[0].headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/auth" in cookie
    english = await server.http.get(response.url.copy_add_param("lang", "en"))
    assert '<html lang="en">' in english.text and "Password" in english.text
    form = parse_form(english.text)
    assert form["hidden"]["lang"] == "en"  # the language follows the forms
    response = await first_page(ui_locales="en")
    assert '<html lang="en">' in response.text
    response = await first_page({"Accept-Language": "en-GB,en;q=0.9,fr;q=0.5"})
    assert '<html lang="en">' in response.text
    response = await first_page({"Accept-Language": "de-DE"})
    assert '<html lang="fr">' in response.text


async def test_consent_deny(server: Server) -> None:
    seen: dict = {}

    def deny(form: dict) -> dict:
        seen["form"] = form
        return {"action": "deny"}

    response = await server.http.get("/auth/authorize", params=authorize_params(challenge=pkce()[1]))
    result = redirect_params(await drive(server.http, response, answers("solo", consent=deny)))
    assert result["error"] == "access_denied" and result["state"] == "st-123" and "code" not in result
    disabled = {i["value"] for i in seen["form"]["inputs"] if i.get("name") == "scope" and "disabled" in i}
    assert "openid" in disabled and "patient/*.rs" not in disabled


async def test_consent_words() -> None:
    from fhir_server.auth.i18n import describe_scope

    assert describe_scope("patient/Observation.rs", "fr") == (
        "Lire et rechercher : observations (mesures, résultats) du dossier choisi"
    )
    assert describe_scope("user/*.cruds", "en").startswith("Create, read, update, delete and search: all health data")
    assert "filtre : category=laboratory" in describe_scope("patient/Observation.rs?category=laboratory", "fr")
    assert (
        describe_scope("patient/Observation.read", "en")
        == "Read and search: observations (measurements, results) of the chosen record"
    )


async def test_csrf_and_foreign_tx(server: Server) -> None:
    _, challenge = pkce()
    response = await server.http.get(
        "/auth/authorize", params=authorize_params(challenge=challenge), follow_redirects=True
    )
    form = parse_form(response.text)
    bad = {**form["hidden"], "csrf": "forged", "username": "solo", "password": PASSWORD}
    assert (await server.http.post(form["action"], data=bad)).status_code == 403
    # the same pending request from another browser (no session cookie) is refused
    transport = server.http._transport
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as other:
        assert (await other.get(str(response.url))).status_code == 400
        fields = {**form["hidden"], "username": "solo", "password": PASSWORD}
        assert (await other.post(form["action"], data=fields)).status_code == 400


async def test_prompt_none(server: Server) -> None:
    response = await server.http.get("/auth/authorize", params=authorize_params(challenge=pkce()[1], prompt="none"))
    assert redirect_params(response)["error"] == "login_required"


# --- refusals at the authorization endpoint ------------------------------------------------------------
async def test_authorize_refusals(server: Server) -> None:
    http = server.http
    _, challenge = pkce()
    # the client or redirect_uri cannot be trusted: an error page, no redirect
    response = await http.get("/auth/authorize", params=authorize_params(challenge=challenge, client_id="nobody"))
    assert response.status_code == 400 and "text/html" in response.headers["content-type"]
    response = await http.get(
        "/auth/authorize", params=authorize_params(challenge=challenge, redirect_uri=REDIRECT + "x")
    )
    assert response.status_code == 400 and "location" not in response.headers
    # otherwise back to the app with error + state
    response = await http.get(
        "/auth/authorize", params=authorize_params(challenge=challenge, aud="https://evil.example")
    )
    assert redirect_params(response) | {"error_description": ""} == {
        "error": "invalid_request", "state": "st-123", "error_description": ""
    }  # fmt: skip
    response = await http.get("/auth/authorize", params=authorize_params())  # public client without PKCE
    assert redirect_params(response)["error"] == "invalid_request"
    plain = authorize_params(code_challenge="x" * 43, code_challenge_method="plain")
    assert redirect_params(await http.get("/auth/authorize", params=plain))["error"] == "invalid_request"
    response = await http.get("/auth/authorize", params=authorize_params(challenge=challenge, scope="system/*.rs"))
    assert redirect_params(response)["error"] == "invalid_scope"
    response = await http.get("/auth/authorize", params=authorize_params(challenge=challenge, response_type="token"))
    assert redirect_params(response)["error"] == "unsupported_response_type"


async def test_unknown_scopes_are_dropped(server: Server) -> None:
    body = await tokens_for(server, answers("solo"), scope="openid patient/Observation.rs patient/*.cruds bogus")
    assert body["scope"] == "openid patient/Observation.rs"


# --- token endpoint refusals ---------------------------------------------------------------------------
async def test_pkce_verifier_checked(server: Server) -> None:
    code, _ = await get_code(server, answers("solo"))
    response = await exchange(server, code, pkce()[0])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    code, _ = await get_code(server, answers("solo"))
    response = await exchange(server, code, None)
    assert response.json()["error"] == "invalid_request"


async def test_code_single_use_and_reuse_revokes(server: Server) -> None:
    code, verifier = await get_code(server, answers("solo"))
    first = await exchange(server, code, verifier)
    assert first.status_code == 200
    jti = server.auth.verify_access_token(first.json()["access_token"], BASE)["jti"]
    again = await exchange(server, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert server.auth.is_revoked(jti)  # RFC 6749 §4.1.2: what the code issued is revoked
    assert (await refresh(server, first.json()["refresh_token"])).json()["error"] == "invalid_grant"


async def test_expired_code(server: Server) -> None:
    code, verifier = await get_code(server, answers("solo"))
    state = server.auth.state
    doc = state.get_temp(CODE, secret_id(code), time.time())
    state.put_temp(CODE, secret_id(code), doc, time.time() - 1)
    assert (await exchange(server, code, verifier)).json()["error"] == "invalid_grant"


async def test_redirect_uri_must_match_at_token(server: Server) -> None:
    code, verifier = await get_code(server, answers("solo"))
    response = await exchange(server, code, verifier, redirect_uri="https://app.example/other")
    assert response.json()["error"] == "invalid_grant"


async def test_token_endpoint_errors_are_json(server: Server) -> None:
    http = server.http
    assert (await http.post("/auth/token", data={"grant_type": "password"})).json()["error"] == "unsupported_grant_type"
    response = await http.post("/auth/token", content=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    response = await http.post("/auth/token", content=b"grant_type=a&grant_type=b",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert response.json()["error"] == "invalid_request"
    response = await http.post(
        "/auth/token", data={"grant_type": "authorization_code", "code": "x", "client_id": "nobody"}
    )
    assert response.json()["error"] == "invalid_client"
    response = await http.post(
        "/auth/token", data={"grant_type": "authorization_code", "code": "x", "client_id": "app"}
    )
    assert response.json()["error"] == "invalid_grant"
    assert response.headers["cache-control"] == "no-store"


# --- refresh -------------------------------------------------------------------------------------------
async def refresh(s: Server, token: str, scope: str | None = None) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": "app", "scope": scope}
    return await s.http.post("/auth/token", data={k: v for k, v in data.items() if v is not None})


async def test_refresh_rotation_and_replay(server: Server) -> None:
    first = await tokens_for(server, answers("solo"))
    second = await refresh(server, first["refresh_token"])
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"] and second["patient"] == "solo"
    assert second["scope"] == first["scope"] and "id_token" not in second
    jti = server.auth.verify_access_token(second["access_token"], BASE)["jti"]
    # the rotated token presented again: refused, and the whole family ends
    replay = await refresh(server, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert (await refresh(server, second["refresh_token"])).json()["error"] == "invalid_grant"
    assert server.auth.is_revoked(jti)


async def test_refresh_scope_narrowing_and_escalation(server: Server) -> None:
    first = await tokens_for(server, answers("solo"), scope="openid offline_access patient/*.rs")
    narrowed = await refresh(server, first["refresh_token"], "patient/Observation.rs")
    assert narrowed.status_code == 200 and narrowed.json()["scope"] == "patient/Observation.rs"
    wide = await refresh(server, narrowed.json()["refresh_token"], "patient/*.rs")  # back within the grant: fine
    assert wide.status_code == 200
    escalated = await refresh(server, wide.json()["refresh_token"], "patient/*.cruds")
    assert escalated.status_code == 400 and escalated.json()["error"] == "invalid_scope"
    other = await refresh(server, wide.json()["refresh_token"], "user/*.rs")
    assert other.json()["error"] == "invalid_scope"
    # a refused request does not burn the refresh token
    assert (await refresh(server, wide.json()["refresh_token"])).status_code == 200


async def test_online_access_ends_with_the_session(server: Server) -> None:
    body = await tokens_for(server, answers("solo"), scope="openid online_access patient/*.rs")
    record = server.auth.state.get_refresh_token(secret_id(body["refresh_token"]))
    assert record["online"] and record["expires"] <= time.time() + 8 * 3600 + 1
    rotated = (await refresh(server, body["refresh_token"])).json()
    # sign out (the logout page's form carries the session's CSRF token)
    page = await server.http.get("/auth/logout")
    form = parse_form(page.text)
    assert (await server.http.post(form["action"], data=form["hidden"])).status_code == 200
    assert (await refresh(server, rotated["refresh_token"])).json()["error"] == "invalid_grant"


async def test_offline_access_survives_the_session(server: Server) -> None:
    body = await tokens_for(server, answers("solo"), scope="openid offline_access patient/*.rs")
    record = server.auth.state.get_refresh_token(secret_id(body["refresh_token"]))
    assert not record["online"] and record["expires"] > time.time() + 29 * 24 * 3600
    page = await server.http.get("/auth/logout")
    form = parse_form(page.text)
    await server.http.post(form["action"], data=form["hidden"])
    assert (await refresh(server, body["refresh_token"])).status_code == 200


# --- SMART Backend Services -----------------------------------------------------------------------------
async def test_backend_services_rs384_and_es384(server: Server) -> None:
    rsa = await backend_token(server, "backend", server.rsa, "RS384")
    assert rsa.status_code == 200, rsa.text
    body = rsa.json()
    assert body["scope"] == "system/*.rs" and "refresh_token" not in body and body["token_type"] == "Bearer"
    claims = server.auth.verify_access_token(body["access_token"], BASE)
    assert claims["sub"] == "backend" and claims["client_id"] == "backend" and "patient" not in claims
    es = await backend_token(server, "backend-es", server.ec, "ES384", scope="system/Patient.rs system/Encounter.rs")
    assert es.status_code == 200, es.text
    assert es.json()["scope"] == "system/Patient.rs"  # Encounter was not registered: dropped


async def test_backend_assertion_refusals(server: Server) -> None:
    jti = uuid.uuid4().hex
    assert (await backend_token(server, "backend", server.rsa, "RS384", jti=jti)).status_code == 200
    replay = await backend_token(server, "backend", server.rsa, "RS384", jti=jti)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_client"
    expired = await backend_token(server, "backend", server.rsa, "RS384", exp_in=-120)
    assert expired.json()["error"] == "invalid_client"
    too_long = await backend_token(server, "backend", server.rsa, "RS384", exp_in=3600)
    assert too_long.json()["error"] == "invalid_client"
    wrong_aud = await backend_token(server, "backend", server.rsa, "RS384", aud="https://elsewhere/token")
    assert wrong_aud.json()["error"] == "invalid_client"
    rs256 = await backend_token(server, "backend", server.rsa, "RS256")
    assert rs256.json()["error"] == "invalid_client"
    other_key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    forged = await backend_token(server, "backend", other_key, "RS384")
    assert forged.json()["error"] == "invalid_client"
    scope = await backend_token(server, "backend", server.rsa, "RS384", scope="patient/*.rs")
    assert scope.json()["error"] == "invalid_scope"
    # a confidential app cannot use client_credentials
    auth = httpx.BasicAuth("conf", server.conf_secret)
    response = await server.http.post("/auth/token", data={"grant_type": "client_credentials"}, auth=auth)
    assert response.json()["error"] in ("unauthorized_client", "invalid_client")


async def test_dynamic_registration_needs_an_initial_access_token(server: Server) -> None:
    """RFC 7591 behind an operator-minted initial access token; the registered clients then work."""
    config = (await server.http.get("/.well-known/smart-configuration")).json()
    assert config["registration_endpoint"] == f"{BASE}/auth/register"
    public = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", "scope": "patient/*.rs launch/patient",
              "client_name": "Agenda"}  # fmt: skip
    assert (await server.http.post("/auth/register", json=public)).status_code == 401  # open registration: no
    not_admin = server.auth.mint_access_token(client_id="app", scope="patient/*.rs", audience=BASE)
    refused = await server.http.post("/auth/register", json=public, headers={"Authorization": f"Bearer {not_admin}"})
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    admin = {"Authorization": f"Bearer {server.auth.mint_access_token(client_id='ops', scope='client-registration')}"}
    created = await server.http.post("/auth/register", json=public, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert "client_secret" not in body and body["redirect_uris"] == [REDIRECT]
    assert server.auth.client(body["client_id"]).type == "public"
    confidential = await server.http.post("/auth/register", json={"redirect_uris": [REDIRECT]}, headers=admin)
    assert confidential.status_code == 201 and confidential.json()["client_secret"]
    assert server.auth.client(confidential.json()["client_id"]).type == "confidential"
    backend = {"token_endpoint_auth_method": "private_key_jwt", "grant_types": ["client_credentials"],
               "jwks": _jwks(server.ec), "scope": "system/Patient.rs"}  # fmt: skip
    registered = await server.http.post("/auth/register", json=backend, headers=admin)
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    token = await backend_token(server, client_id, server.ec, "ES384", scope="system/Patient.rs")
    assert token.status_code == 200 and token.json()["scope"] == "system/Patient.rs"
    for bad, error in (({"redirect_uris": ["not a url"]}, "invalid_redirect_uri"),
                       ({"token_endpoint_auth_method": "tls_client_auth"}, "invalid_client_metadata"),
                       ({"token_endpoint_auth_method": "none"}, "invalid_redirect_uri"),
                       (["not", "an", "object"], "invalid_client_metadata")):  # fmt: skip
        answer = await server.http.post("/auth/register", json=bad, headers=admin)
        assert answer.status_code == 400 and answer.json()["error"] == error, (bad, answer.text)
    garbage = await server.http.post(
        "/auth/register", content=b"{", headers={**admin, "Content-Type": "application/json"}
    )
    assert garbage.status_code == 400 and garbage.json()["error"] == "invalid_client_metadata"


async def test_backend_keys_by_url(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "url-1"})
    fetched: list[str] = []

    def fetch(url: str) -> dict:
        fetched.append(url)
        return _jwks(key)

    monkeypatch.setattr(assertions_module, "fetch_jwks", fetch)
    server.auth.add_client("remote", "backend", jwks_url="https://remote.example/jwks.json")
    assert (await backend_token(server, "remote", key, "RS384")).status_code == 200
    assert (await backend_token(server, "remote", key, "RS384")).status_code == 200
    assert fetched == ["https://remote.example/jwks.json"]  # cached


# --- tokens, introspection, revocation ------------------------------------------------------------------
async def test_verify_access_token_refusals(server: Server) -> None:
    auth = server.auth
    token = auth.mint_access_token(client_id="backend", scope="system/*.rs", audience=BASE)
    assert auth.verify_access_token(token, BASE + "/")["scope"] == "system/*.rs"
    header, payload, signature = token.split(".")
    tampered_payload = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(payload + "==").replace(b"system/*.rs", b"system/*.cruds")
    ).decode().rstrip("=")  # fmt: skip
    for bad in (f"{header}.{tampered_payload}.{signature}", f"{header}.{payload}.{signature[:-4]}AAAA", "garbage"):
        with pytest.raises(InvalidToken):
            auth.verify_access_token(bad, BASE)
    with pytest.raises(InvalidToken) as wrong_aud:
        auth.verify_access_token(token, "https://other.example/fhir")
    assert wrong_aud.value.description
    old = auth.mint_access_token(client_id="backend", scope="system/*.rs", audience=BASE, lifetime=10)
    claims = jwt.decode(old, await jwks_keyset(server), algorithms=["RS256"]).claims
    assert claims["exp"] - claims["iat"] == 10
    foreign = RSAKey.generate_key(2048, parameters={"kid": "x"})
    forged = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": "x"}, dict(claims, exp=int(time.time()) + 60), foreign)
    with pytest.raises(InvalidToken):
        auth.verify_access_token(forged, BASE)


async def test_expired_access_token(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    token = server.auth.mint_access_token(client_id="backend", scope="system/*.rs", audience=BASE, lifetime=10)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 60)
    with pytest.raises(InvalidToken):
        server.auth.verify_access_token(token, BASE)


async def test_introspection_and_revocation(server: Server) -> None:
    body = await tokens_for(server, answers("solo"))
    auth = httpx.BasicAuth("conf", server.conf_secret)
    active = (await server.http.post("/auth/introspect", data={"token": body["access_token"]}, auth=auth)).json()
    assert active["active"] is True and active["client_id"] == "app" and active["sub"] == "solo"
    assert active["patient"] == "solo" and active["fhirUser"] == "Patient/solo" and active["scope"] == body["scope"]
    refresh_info = (await server.http.post("/auth/introspect", data={"token": body["refresh_token"]}, auth=auth)).json()
    assert refresh_info["active"] is True and refresh_info["token_type"] == "refresh_token"
    # a public client may not introspect
    response = await server.http.post("/auth/introspect", data={"token": body["access_token"], "client_id": "app"})
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"
    # the app revokes its access token (RFC 7009: public clients identify themselves)
    response = await server.http.post("/auth/revoke", data={"token": body["access_token"], "client_id": "app"})
    assert response.status_code == 200
    jti = server.auth.verify_access_token(body["access_token"], BASE)["jti"]
    assert server.auth.is_revoked(jti)
    inactive = (await server.http.post("/auth/introspect", data={"token": body["access_token"]}, auth=auth)).json()
    assert inactive == {"active": False}
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await server.http.get("/auth/userinfo", headers=headers)).status_code == 401
    # unknown and tampered tokens: inactive, revocation a no-op
    for junk in ("nope", body["access_token"][:-3] + "abc"):
        assert (await server.http.post("/auth/introspect", data={"token": junk}, auth=auth)).json() == {"active": False}
        assert (await server.http.post("/auth/revoke", data={"token": junk, "client_id": "app"})).status_code == 200
    # revoking the refresh token ends the grant
    response = await server.http.post("/auth/revoke", data={"token": body["refresh_token"], "client_id": "app"})
    assert response.status_code == 200
    assert (await refresh(server, body["refresh_token"])).json()["error"] == "invalid_grant"
    # another client cannot revoke the app's tokens
    other = await tokens_for(server, answers("solo"))
    response = await server.http.post("/auth/revoke", data={"token": other["access_token"]}, auth=auth)
    assert response.status_code == 400
    assert not server.auth.is_revoked(server.auth.verify_access_token(other["access_token"], BASE)["jti"])


async def test_revocation_reaches_listeners(server: Server) -> None:
    seen: list[str] = []
    server.auth.on_revoked(seen.append)
    body = await tokens_for(server, answers("solo"))
    await server.http.post("/auth/revoke", data={"token": body["access_token"], "client_id": "app"})
    jti = server.auth.verify_access_token(body["access_token"], BASE)["jti"]
    for _ in range(10):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen == [jti]


# --- login protections ----------------------------------------------------------------------------------
async def test_login_throttling(server: Server) -> None:
    _, challenge = pkce()
    response = await server.http.get(
        "/auth/authorize", params=authorize_params(challenge=challenge), follow_redirects=True
    )
    for attempt in range(5):
        form = parse_form(response.text)
        response = await server.http.post(
            form["action"], data={**form["hidden"], "username": "solo", "password": "bad"}
        )
        assert response.status_code == 401, attempt
        assert 'role="alert"' in response.text
    form = parse_form(response.text)
    response = await server.http.post(form["action"], data={**form["hidden"], "username": "solo", "password": PASSWORD})
    assert response.status_code == 429 and response.headers["retry-after"]
    assert "Trop de tentatives" in response.text
    # other users are not locked out
    assert (await tokens_for(server, answers("zoe", patient={"patient": "zoe"})))["patient"] == "zoe"


async def test_totp_required_and_checked(server: Server) -> None:
    secret = server.totp_secret
    steps: list[str] = []

    def wrong(form: dict) -> dict:
        steps.append("totp")
        code = totp.code_at(secret)
        return {"code": "000000" if code != "000000" else "111111"}

    verifier, challenge = pkce()
    response = await server.http.get("/auth/authorize", params=authorize_params(challenge=challenge))
    response = await drive(server.http, response, answers("otp", totp=wrong))
    assert response.status_code == 401 and steps == ["totp"]
    form = parse_form(response.text)
    assert form["hidden"]["step"] == "totp"
    code = totp.code_at(secret)
    response = await server.http.post(form["action"], data={**form["hidden"], "code": code})
    response = await drive(server.http, response, answers("otp"))
    result = redirect_params(response)
    body = (await exchange(server, result["code"], verifier)).json()
    id_token = jwt.decode(body["id_token"], await jwks_keyset(server), algorithms=["RS256"]).claims
    assert id_token["amr"] == ["pwd", "otp"]
    # the same code cannot be used twice (a shoulder-surfed code)
    response = await server.http.get("/auth/authorize", params=authorize_params(challenge=challenge, prompt="login"))
    response = await drive(server.http, response, answers("otp", totp={"code": code}))
    assert response.status_code == 401


# --- keys ----------------------------------------------------------------------------------------------
async def test_key_rotation(server: Server) -> None:
    auth = server.auth
    old = auth.mint_access_token(client_id="backend", scope="system/*.rs", audience=BASE)
    old_kid = jwt.decode(old, await jwks_keyset(server), algorithms=["RS256"]).header["kid"]
    upcoming = auth.rotate_keys()  # published now, signs in 60 s
    kids = {k["kid"] for k in (await server.http.get("/auth/jwks")).json()["keys"]}
    assert kids == {old_kid, upcoming}
    assert jwt.decode(auth.mint_access_token(client_id="b", scope="s", audience=BASE), await jwks_keyset(server),
                      algorithms=["RS256"]).header["kid"] == old_kid  # fmt: skip
    newest = auth.rotate_keys(0)
    new = auth.mint_access_token(client_id="backend", scope="system/*.rs", audience=BASE)
    assert jwt.decode(new, await jwks_keyset(server), algorithms=["RS256"]).header["kid"] == newest
    assert auth.verify_access_token(old, BASE)["client_id"] == "backend"  # the old key still verifies
    assert old_kid in {k["kid"] for k in (await server.http.get("/auth/jwks")).json()["keys"]}


async def test_keys_persist_across_restarts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fhir.db'}"
    async with running(url) as s:
        token = s.auth.mint_access_token(client_id="backend", scope="system/*.rs", audience=BASE)
    async with running(url) as s:
        assert s.auth.verify_access_token(token, BASE)["client_id"] == "backend"
    assert (tmp_path / "auth.db").exists()


async def test_malformed_requests_never_fail_with_500(server: Server) -> None:
    http = server.http
    assertion_type = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    hs256 = jwt.encode({"alg": "HS256"}, {"sub": 5, "exp": "soon"}, OctKey.import_key("k" * 32), algorithms=["HS256"])
    weird_claims = client_assertion("backend", server.rsa, "RS384").split(".")
    forms = [
        {"grant_type": "client_credentials", "client_assertion_type": assertion_type, "client_assertion": "x.y.z"},
        {"grant_type": "client_credentials", "client_assertion_type": assertion_type, "client_assertion": hs256},
        {"grant_type": "client_credentials", "client_assertion_type": assertion_type,
         "client_assertion": f"{weird_claims[0]}.{base64.urlsafe_b64encode(b'[1]').decode()}.{weird_claims[2]}"},
        {"grant_type": "refresh_token", "client_id": "app"},
        {"grant_type": "refresh_token", "client_id": "app", "refresh_token": "x" * 5000},
        {"grant_type": "authorization_code", "client_id": "app", "code": "", "code_verifier": "short"},
        {},
    ]  # fmt: skip
    for form in forms:
        response = await http.post("/auth/token", data=form)
        assert 400 <= response.status_code < 500 and "error" in response.json(), (form, response.text)
    for path in ("/auth/introspect", "/auth/revoke"):
        for form in ({}, {"token": "x", "token_type_hint": "bogus", "client_id": "app"}, {"token": "x"}):
            assert 400 <= (await http.post(path, data=form)).status_code < 500
    for params in ({}, {"client_id": "app"}, {"client_id": ["app", "conf"], "response_type": "code"}):
        assert 400 <= (await http.get("/auth/authorize", params=params)).status_code < 500
    assert (await http.get("/auth/interaction")).status_code == 400
    assert (await http.post("/auth/interaction", data={})).status_code == 400
    assert (
        await http.post("/auth/interaction", content=b"\xff", headers={"Content-Type": "text/plain"})
    ).status_code == 400
    token = server.auth.mint_access_token(client_id="backend", scope="system/*.rs", audience=BASE)
    headers = {"Authorization": f"Bearer {token}"}
    for body in ([1], {"patient": 5}, {"patient": "bad id"}):
        assert (await http.post("/auth/launch", json=body, headers=headers)).status_code == 400
    for value in ("Bearer", "Basic abc", "Bearer a.b.c"):
        assert (await http.get("/auth/userinfo", headers={"Authorization": value})).status_code == 401


async def test_tokens_open_the_fhir_api(server: Server) -> None:
    """The contract with the resource server: our tokens authenticate FHIR requests, revoked ones do not."""
    assert (await server.http.get("/Patient")).status_code == 401
    body = await tokens_for(server, answers("solo"))
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await server.http.get("/Patient", headers=headers)).status_code == 200
    await server.http.post("/auth/revoke", data={"token": body["access_token"], "client_id": "app"})
    await asyncio.sleep(0.05)  # the revocation listener runs on the event loop
    assert (await server.http.get("/Patient", headers=headers)).status_code == 401
    system = server.auth.mint_access_token(client_id="backend", scope="system/*.rs", audience=BASE)
    assert (await server.http.get("/Patient", headers={"Authorization": f"Bearer {system}"})).status_code == 200

"""SMART App Launch end to end: real clients against the real ``fhir-server serve`` process.

One server process for the module (SQLite store in a temporary directory). Before it starts, the CLI
registers the users and clients and mints the operator tokens; the data is then seeded over HTTP with a
``system/*.cruds`` token. The clients are the real ones: SMART's JS ``fhirclient`` in headless chromium
(``tests/smart_e2e.py``, ``tests/js``), the Python ``fhirclient`` from PyPI, a backend service signing
its own client assertions, and plain HTTP with the tokens the server issued.

The data:

- ``pat-a`` (family Alpha), whose user ``alice`` also manages her child ``pat-c`` (family Alpha);
- ``pat-b`` (family Bravo), another person, user ``bob`` (password + TOTP);
- Observations: ``obs-a`` (A, performer ``prac-1``), ``obs-a-panel`` (A, ``hasMember`` obs-a and
  B's obs-b1, ``focus`` Patient/pat-b: A's data pointing at B), ``obs-c`` (C), ``obs-b1`` (B),
  ``obs-b2`` (B, ``focus`` Patient/pat-a: B's data pointing at A);
- Practitioner ``prac-1``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import smart_e2e
from conftest import fhir_server_command, free_port, stop_process, wait_until_serving
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhirclient import client as py_fhirclient
from fhirclient.server import FHIRNotFoundException
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from fhir_server.auth import totp

PASSWORD = "e2e correct horse battery"
ALICE, BOB = "alice", "bob"
A, B, C = "pat-a", "pat-b", "pat-c"
OBS_A = {"obs-a", "obs-a-panel"}
OBS_ALL = OBS_A | {"obs-c", "obs-b1", "obs-b2"}
APP_CLIENT = "e2e-app"  # public: the JS app and the Python client
EHR_CLIENT = "e2e-ehr"  # confidential: operator tokens for the HTTP tests, revocation
BACKEND_CLIENT = "e2e-etl"  # backend: private_key_jwt (RS384 and ES384 keys), seeding token
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Chromium refuses to navigate to these (ERR_UNSAFE_PORT); the Python client's redirect_uri avoids them.
_UNSAFE_PORTS = {6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080}


@dataclass
class E2E:
    base: str  # the FHIR base URL (issuer, audience)
    app: str  # the static SMART app (tests/js/app)
    py_redirect: str  # the Python client's redirect_uri: nothing listens there
    bob_totp_secret: str
    ehr_secret: str
    rsa_key: RSAKey
    ec_key: ECKey
    tokens: dict[str, str] = field(default_factory=dict)  # seed, pa, expired, revocable

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    env["FHIR_SERVER_LOAD_DEFINITIONS"] = "false"
    return env


def _cli(cwd: Path, store: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [*fhir_server_command(), *args, "--store", store],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_clean_env(),
        timeout=60,
    )
    assert proc.returncode == 0, f"fhir-server {' '.join(args)} failed: {proc.stderr[-2000:]}"
    return proc.stdout.strip()


def _loopback_port() -> int:
    while (port := free_port()) in _UNSAFE_PORTS:
        pass
    return port


def _patient(pid: str, family: str, given: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}]}


def _observation(oid: str, subject: str, **extra: object) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}]},
        "subject": {"reference": f"Patient/{subject}"},
        "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        **extra,
    }


SEED = [
    _patient(A, "Alpha", "Anna"),
    _patient(C, "Alpha", "Chloe"),
    _patient(B, "Bravo", "Bruno"),
    {"resourceType": "Practitioner", "id": "prac-1", "name": [{"family": "Medic", "given": ["Paula"]}]},
    _observation("obs-a", A, performer=[{"reference": "Practitioner/prac-1"}]),
    _observation(
        "obs-a-panel",
        A,
        hasMember=[{"reference": "Observation/obs-a"}, {"reference": "Observation/obs-b1"}],
        focus=[{"reference": f"Patient/{B}"}],
    ),
    _observation("obs-c", C),
    _observation("obs-b1", B),
    _observation("obs-b2", B, focus=[{"reference": f"Patient/{A}"}]),
]


def _keys() -> tuple[RSAKey, ECKey]:
    """The backend client's keys, made with cryptography and handed to joserfc."""
    pem = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(*pem)
    ec_pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(*pem)
    return (
        RSAKey.import_key(rsa_pem, parameters={"kid": "e2e-rsa", "alg": "RS384", "use": "sig"}),
        ECKey.import_key(ec_pem, parameters={"kid": "e2e-ec", "alg": "ES384", "use": "sig"}),
    )


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    tmp = tmp_path_factory.mktemp("smart-e2e")
    store = f"sqlite:///{tmp / 'fhir.db'}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    py_redirect = f"http://127.0.0.1:{_loopback_port()}/callback"
    rsa_key, ec_key = _keys()
    jwks_file = tmp / "e2e-etl.jwks.json"
    jwks_file.write_text(json.dumps({"keys": [rsa_key.as_dict(private=False), ec_key.as_dict(private=False)]}))

    with smart_e2e.serve_app() as app:
        # --- the CLI: users, clients, operator tokens (before the server starts) -------------------------
        # --init: the first administration command creates the auth state (a missing one is otherwise an error)
        _cli(tmp, store, "users", "add", ALICE, "--fhir-user", f"Patient/{A}", "--patient", C, "--password-stdin",
             "--name", "Anna Alpha", "--init", stdin=PASSWORD + "\n")  # fmt: skip
        otpauth = _cli(tmp, store, "users", "add", BOB, "--fhir-user", f"Patient/{B}", "--password-stdin", "--totp",
                       stdin=PASSWORD + "\n")  # fmt: skip
        assert otpauth.startswith("otpauth://totp/")
        bob_secret = parse_qs(urlsplit(otpauth).query)["secret"][0]
        _cli(tmp, store, "clients", "add", APP_CLIENT, "--type", "public", "--redirect-uri", f"{app}/index.html",
             "--redirect-uri", py_redirect, "--name", "E2E app")  # fmt: skip
        ehr_secret = _cli(tmp, store, "clients", "add", EHR_CLIENT, "--type", "confidential",
                          "--redirect-uri", f"{app}/ehr-callback")  # fmt: skip
        _cli(tmp, store, "clients", "add", BACKEND_CLIENT, "--type", "backend", "--jwks", str(jwks_file),
             "--scope", "system/*.rs")  # fmt: skip
        env = E2E(base, app, py_redirect, bob_secret, ehr_secret, rsa_key, ec_key)
        mint = ["token", "--aud", base]
        env.tokens["seed"] = _cli(tmp, store, *mint, "--client", BACKEND_CLIENT, "--scope", "system/*.cruds")
        patient_a = ["--client", EHR_CLIENT, "--patient", A]
        env.tokens["pa"] = _cli(tmp, store, *mint, *patient_a, "--scope", "patient/*.cruds")
        env.tokens["expired"] = _cli(tmp, store, *mint, *patient_a, "--scope", "patient/*.rs", "--lifetime=-120")
        env.tokens["revocable"] = _cli(tmp, store, *mint, *patient_a, "--scope", "patient/*.rs")

        # --- the server ------------------------------------------------------------------------------------
        log = (tmp / "server.log").open("w")
        proc = subprocess.Popen(
            [*fhir_server_command(), "serve", "--port", str(port), "--store", store, "--base-url", base],
            cwd=tmp,
            env=_clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            if not wait_until_serving(base, proc, timeout=60):
                pytest.fail(f"fhir-server serve did not start: {(tmp / 'server.log').read_text()[-3000:]}")
            with env.http(env.tokens["seed"]) as http:
                bundle = {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in SEED
                    ],
                }
                r = http.post("/", json=bundle, headers={"Content-Type": "application/fhir+json"})
                assert r.status_code == 200, r.text
            yield env
        finally:
            stop_process(proc)
            log.close()


# --- helpers ----------------------------------------------------------------------------------------
def _drive(args: dict) -> dict:
    return smart_e2e.drive({"timeoutMs": 30000, **args})


def _report(report: dict) -> str:
    return json.dumps(report, indent=1)[:8000]


def _launch_url(e2e: E2E, **params: str) -> str:
    return f"{e2e.app}/launch.html?{urlencode({'iss': e2e.base, 'clientId': APP_CLIENT, **params})}"


def _step(report: dict, filled: str) -> dict:
    """The first step of the browser run whose filled fields include ``filled`` (prefix match)."""
    for step in report["steps"]:
        if any(f.startswith(filled) for f in step["filled"]):
            return step
    raise AssertionError(f"no step filled {filled!r}: {_report(report)}")


def _ids(bundle: dict, resource_type: str | None = None, mode: str | None = None) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" if resource_type is None else e["resource"]["id"]
        for e in bundle.get("entry", [])
        if (resource_type is None or e["resource"]["resourceType"] == resource_type)
        and (mode is None or e.get("search", {}).get("mode") == mode)
    }


def _assert_invalid_token(response: httpx.Response, why: str) -> None:
    """401 with ``WWW-Authenticate: Bearer …, error="invalid_token", error_description="…<why>…"``."""
    assert response.status_code == 401, response.text
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, challenge
    assert why in challenge.partition("error_description=")[2].lower(), challenge


# --- 1. JS fhirclient, standalone launch, patient picker, partial consent ------------------------------
def test_js_client_standalone_launch_picks_child_and_partial_consent(e2e: E2E) -> None:
    smart_e2e.require_browser_tooling()
    scope = "launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs"
    url = _launch_url(
        e2e,
        scope=scope,
        pkceMode="required",
        requests=f"Patient/{{patient}},Patient/{B},Observation?patient={{patient}}",
    )
    report = _drive(
        {
            "url": url,
            "username": ALICE,
            "password": PASSWORD,
            "patient": C,
            "uncheck": ["patient/Observation.rs"],
            "locale": "fr-FR",
        }
    )
    # Authorized; one request was meant to fail (B), one was no longer granted (Observation).
    assert report["status"] == "app-error" and report["resultStatus"] == "request-error", _report(report)
    result = report["result"]
    assert result["patient"] == C
    granted = result["scope"].split()
    assert "patient/Observation.rs" not in granted
    assert {"launch/patient", "openid", "fhirUser", "offline_access", "patient/Patient.rs"} <= set(granted)
    token = result["tokenResponse"]
    assert token["patient"] == C and token["token_type"].lower() == "bearer" and token["need_patient_banner"] is True
    assert token["access_token"]["present"] and token["id_token"]["present"]
    assert token["refresh_token"]["present"]  # offline_access stayed ticked
    assert result["fhirUser"].endswith(f"Patient/{A}")  # the user is A, acting for her child C
    own, other, observations = result["requests"]
    assert own == {"path": f"Patient/{C}", "ok": True, "resourceType": "Patient", "id": C}
    assert other["path"] == f"Patient/{B}" and not other["ok"] and other["status"] == 404
    assert not observations["ok"] and observations["status"] == 403  # the unticked scope
    # The pages: sign-in, picker (A and C offered: C picked), consent (the unticked scope was offered).
    assert _step(report, "username")["filled"] == ["username", "password"]
    assert _step(report, "patient=")["filled"] == [f"patient={C}"]
    consent = _step(report, "-patient/Observation.rs")
    offered = {b["value"]: b["checked"] for b in consent["scopesOffered"]}
    assert offered["patient/Observation.rs"] is True and offered["offline_access"] is True
    assert consent["submitted"] == "decision=allow"
    assert {s["lang"] for s in report["steps"]} == {"fr"}  # French: the browser's Accept-Language
    assert report["consoleErrors"] == [] or all("404" in m or "403" in m for m in report["consoleErrors"])


# --- 2. TOTP second factor, English pages ------------------------------------------------------------
def test_js_client_with_totp_and_english_pages(e2e: E2E) -> None:
    smart_e2e.require_browser_tooling()
    url = _launch_url(
        e2e,
        scope="launch/patient openid fhirUser patient/*.rs",
        pkceMode="required",
        requests=f"Patient/{{patient}},Observation?patient={{patient}},Patient/{A}",
        authorizeParams="ui_locales=en",
    )
    report = _drive(
        {
            "url": url,
            "username": BOB,
            "password": PASSWORD,
            "otp": totp.code_at(e2e.bob_totp_secret),
            "locale": "fr-FR",  # Accept-Language says French; ui_locales=en wins
        }
    )
    assert report["resultStatus"] == "request-error", _report(report)
    result = report["result"]
    assert result["patient"] == B and result["tokenResponse"]["patient"] == B  # one record: no picker
    assert "patient/*.rs" in result["scope"].split()
    own, observations, other = result["requests"]
    assert own["ok"] and own["id"] == B
    assert observations["ok"] and observations["resourceType"] == "Bundle" and observations["total"] == 2
    assert not other["ok"] and other["status"] == 404
    filled = [s["filled"] for s in report["steps"]]
    assert filled[0] == ["username", "password"] and filled[1] == ["otp"], _report(report)  # the second factor
    assert not any(f.startswith("patient=") for fs in filled for f in fs)
    assert [s["lang"] for s in report["steps"]] == ["en", "en", "en"], _report(report)  # login, TOTP, consent
    # The same page over plain HTTP: <html lang="en"> with ui_locales=en, French without.
    with httpx.Client(timeout=30, follow_redirects=True) as http:
        query = {
            "response_type": "code",
            "client_id": APP_CLIENT,
            "redirect_uri": f"{e2e.app}/index.html",
            "scope": "openid patient/*.rs",
            "state": "s",
            "aud": e2e.base,
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGKSsw6ABc",
            "code_challenge_method": "S256",
        }
        english = http.get(f"{e2e.base}/auth/authorize", params={**query, "ui_locales": "en"})
        french = http.get(f"{e2e.base}/auth/authorize", params=query, headers={"Accept-Language": "fr-FR"})
    assert english.status_code == 200 and '<html lang="en">' in english.text and 'name="password"' in english.text
    assert french.status_code == 200 and '<html lang="fr">' in french.text


# --- 3. EHR launch ------------------------------------------------------------------------------------
def test_js_client_ehr_launch(e2e: E2E) -> None:
    smart_e2e.require_browser_tooling()
    with e2e.http(e2e.tokens["seed"]) as http:  # the EHR: a backend client's token
        created = http.post("/auth/launch", json={"patient": A})
        leaked = http.post("/auth/launch", json={"patient": B})
    assert created.status_code == 201, created.text
    launch = created.json()["launch"]
    url = _launch_url(
        e2e,
        launch=launch,
        scope="launch patient/*.rs openid fhirUser",
        requests=f"Patient/{{patient}},Observation?patient={{patient}},Patient/{C}",
    )
    report = _drive({"url": url, "username": ALICE, "password": PASSWORD})
    assert report["resultStatus"] == "request-error", _report(report)
    result = report["result"]
    token = result["tokenResponse"]
    assert result["patient"] == A and token["patient"] == A and token["need_patient_banner"] is False
    assert {"launch", "patient/*.rs", "openid", "fhirUser"} <= set(result["scope"].split())
    own, observations, child = result["requests"]
    assert own["ok"] and own["id"] == A
    assert observations["ok"] and observations["total"] == len(OBS_A)
    assert not child["ok"] and child["status"] == 404  # alice manages C, but this launch is A's
    assert not any(f.startswith("patient=") for s in report["steps"] for f in s["filled"])  # no picker: in context

    # A launch into someone alice does not manage (B) opens nothing for her.
    assert leaked.status_code == 201
    url = _launch_url(e2e, launch=leaked.json()["launch"], scope="launch patient/*.rs openid")
    report = _drive({"url": url, "username": ALICE, "password": PASSWORD, "stuckMs": 1500})
    assert report["status"] == "stuck" and report["resultStatus"] is None, _report(report)
    assert any(e["status"] == 403 and "/auth/interaction" in e["url"] for e in report["httpErrors"]), _report(report)
    assert "/index.html" not in (report["finalUrl"] or "")


# --- 4. Python fhirclient (PyPI) --------------------------------------------------------------------
def test_python_fhirclient_standalone_launch(e2e: E2E) -> None:
    smart_e2e.require_browser_tooling()
    settings = {
        "app_id": APP_CLIENT,
        "api_base": e2e.base + "/",
        "redirect_uri": e2e.py_redirect,
        "scope": "patient/*.read openid fhirUser",
    }
    smart = py_fhirclient.FHIRClient(settings=settings)
    authorize_url = smart.authorize_url  # discovered through /metadata (oauth-uris)
    assert authorize_url.startswith(f"{e2e.base}/auth/authorize?")
    query = parse_qs(urlsplit(authorize_url).query)
    assert query["code_challenge_method"] == ["S256"] and "launch/patient" in query["scope"][0].split()
    report = _drive(
        {"url": authorize_url, "stopAt": e2e.py_redirect, "username": ALICE, "password": PASSWORD, "patient": A}
    )
    assert report["status"] == "stopped", _report(report)
    smart.handle_callback(report["stoppedAt"])
    assert smart.ready and smart.patient_id == A
    patient = smart.server.request_json(f"Patient/{smart.patient_id}")
    assert patient["resourceType"] == "Patient" and patient["id"] == A
    assert smart.patient.name[0].family == "Alpha"  # fhirclient's own (strict) models parse it
    assert smart.server.request_json("Observation/obs-a")["subject"]["reference"] == f"Patient/{A}"
    for other in ("Observation/obs-b1", f"Patient/{B}", "Observation/obs-c"):
        with pytest.raises(FHIRNotFoundException):
            smart.server.request_json(other)
    found = smart.server.request_json("Observation?_count=50")
    assert found["total"] == len(OBS_A) and _ids(found, "Observation") == OBS_A
    # This flow's own token through _revinclude: B's obs-b2 (focus A) stays out.
    rev = smart.server.request_json("Patient?_revinclude=Observation:subject&_revinclude=Observation:focus")
    assert _ids(rev) == {f"Patient/{A}"} | {f"Observation/{o}" for o in OBS_A}


# --- 5. Backend services (private_key_jwt, RS384 and ES384) -------------------------------------------
def _assertion(e2e: E2E, key: RSAKey | ECKey, alg: str, **claims: object) -> str:
    now = int(time.time())
    body = {
        "iss": BACKEND_CLIENT,
        "sub": BACKEND_CLIENT,
        "aud": f"{e2e.base}/auth/token",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 240,
        **claims,
    }
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, body, key, algorithms=[alg])


def _client_credentials(e2e: E2E, assertion: str, scope: str = "system/*.rs") -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    return httpx.post(f"{e2e.base}/auth/token", data=form, timeout=30)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_client_credentials(e2e: E2E, alg: str) -> None:
    key = e2e.rsa_key if alg == "RS384" else e2e.ec_key
    discovery = httpx.get(f"{e2e.base}/.well-known/smart-configuration", timeout=30).json()
    assert alg in discovery["token_endpoint_auth_signing_alg_values_supported"]
    assert discovery["token_endpoint"] == f"{e2e.base}/auth/token"
    assertion = _assertion(e2e, key, alg)
    r = _client_credentials(e2e, assertion, "system/*.rs system/*.cruds")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"].lower() == "bearer" and body["scope"] == "system/*.rs"  # cruds: not registered
    assert "refresh_token" not in body and body["expires_in"] > 0
    with e2e.http(body["access_token"]) as http:
        observations = http.get("/Observation", params={"_count": 50})
        assert observations.status_code == 200, observations.text
        bundle = observations.json()
        assert _ids(bundle, "Observation") >= OBS_ALL  # every patient's data
        subjects = {e["resource"]["subject"]["reference"] for e in bundle["entry"]}
        assert {f"Patient/{A}", f"Patient/{B}", f"Patient/{C}"} <= subjects
        write = http.put("/Patient/pat-b", json=_patient(B, "Bravo", "Bruno"))
        assert write.status_code == 403  # system/*.rs: read-only
    replay = _client_credentials(e2e, assertion)
    assert replay.status_code in (400, 401), replay.text
    assert replay.json()["error"] in ("invalid_client", "invalid_grant")
    assert "already used" in replay.json().get("error_description", "")
    # An assertion for another audience, or signed with an algorithm SMART does not allow, gets nothing.
    wrong_aud = _client_credentials(e2e, _assertion(e2e, key, alg, aud=f"{e2e.base}/other"))
    assert wrong_aud.status_code in (400, 401) and wrong_aud.json()["error"] == "invalid_client"
    if alg == "RS384":
        same_key = RSAKey.import_key({k: v for k, v in key.as_dict(private=True).items() if k != "alg"})
        weak = _client_credentials(e2e, _assertion(e2e, same_key, "RS256"))
        assert weak.status_code in (400, 401) and weak.json()["error"] == "invalid_client"


# --- 6. What a patient-A token cannot reach, and tokens that no longer work ----------------------------
def test_patient_token_cannot_read_or_search_another_patient(e2e: E2E) -> None:
    with e2e.http(e2e.tokens["pa"]) as http:
        assert http.get(f"/Patient/{A}").status_code == 200
        assert http.get("/Observation/obs-a").status_code == 200
        for path in (
            f"/Patient/{B}",
            "/Observation/obs-b1",
            "/Observation/obs-b2",
            f"/Patient/{C}",
            "/Observation/obs-c",
        ):
            r = http.get(path)
            assert r.status_code == 404, (path, r.status_code, r.text)
        assert http.get("/Practitioner/prac-1").status_code == 200  # outside any compartment: readable

        patients = http.get("/Patient").json()
        assert patients["total"] == 1 and _ids(patients, "Patient") == {A}
        observations = http.get("/Observation", params={"_count": 50}).json()
        assert observations["total"] == len(OBS_A) and _ids(observations, "Observation") == OBS_A
        by_b = http.get("/Observation", params={"patient": B}).json()
        assert by_b["total"] == 0 and not by_b.get("entry")
        count = http.get("/Observation", params={"subject": f"Patient/{B}", "_summary": "count"}).json()
        assert count["total"] == 0

        # _include: A's panel points at B (focus) and at B's observation (hasMember): neither comes back.
        included = http.get(
            "/Observation",
            params=[
                ("_include", "Observation:subject"),
                ("_include", "Observation:focus"),
                ("_include", "Observation:has-member"),
                ("_include", "Observation:performer"),
            ],
        ).json()
        assert included["total"] == len(OBS_A)
        assert _ids(included, mode="match") == {f"Observation/{o}" for o in OBS_A}
        assert _ids(included, mode="include") == {f"Patient/{A}", "Practitioner/prac-1"}  # includes do work

        # _revinclude: B's obs-b2 has focus A; it stays out.
        revincluded = http.get(
            "/Patient", params=[("_revinclude", "Observation:subject"), ("_revinclude", "Observation:focus")]
        ).json()
        assert revincluded["total"] == 1
        assert _ids(revincluded) == {f"Patient/{A}"} | {f"Observation/{o}" for o in OBS_A}

        # Chains: B (and C, same family as A) cannot be probed.
        assert http.get("/Observation", params={"subject:Patient.family": "Bravo"}).json()["total"] == 0
        alpha = http.get("/Observation", params={"subject:Patient.family": "Alpha"}).json()
        assert alpha["total"] == len(OBS_A) and _ids(alpha, "Observation") == OBS_A
        has = http.get("/Patient", params={"_has:Observation:subject:_id": "obs-b1"}).json()
        assert has["total"] == 0

    # Controls with a system token: the same queries do reach B when allowed.
    with e2e.http(e2e.tokens["seed"]) as http:
        assert http.get("/Observation", params={"subject:Patient.family": "Bravo"}).json()["total"] == 2
        rev = http.get("/Patient", params={"_id": A, "_revinclude": "Observation:focus"}).json()
        assert "Observation/obs-b2" in _ids(rev, mode="include")
        inc = http.get("/Observation", params={"_id": "obs-a-panel", "_include": "Observation:has-member"}).json()
        assert "Observation/obs-b1" in _ids(inc, mode="include")


def _transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _probe(marker: str, subject: str) -> dict:
    obs = _observation("x", subject, identifier=[{"system": "urn:e2e", "value": marker}])
    del obs["id"]
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": obs, "request": {"method": "POST", "url": "Observation"}}


def test_patient_token_transaction_touching_another_patient_writes_nothing(e2e: E2E) -> None:
    with e2e.http(e2e.tokens["seed"]) as admin:
        before = admin.get("/Observation/obs-b1").json()
    changed = dict(before, status="amended")
    changed.pop("meta", None)
    update_b = {"resource": changed, "request": {"method": "PUT", "url": "Observation/obs-b1"}}
    with e2e.http(e2e.tokens["pa"]) as http:
        # The token can write A's data: a transaction of A's entries alone succeeds.
        ok = http.post("/", json=_transaction(_probe("tx-ok", A)))
        assert ok.status_code == 200, ok.text
        created = ok.json()["entry"][0]["response"]["location"].split("/_history")[0]
        # One entry updating B's observation, one creating an observation for B: each fails the whole Bundle.
        for marker, bad in (("tx-update-b", update_b), ("tx-create-b", _probe("tx-create-b-itself", B))):
            r = http.post("/", json=_transaction(_probe(marker, A), bad))
            assert r.status_code in (403, 404), (marker, r.status_code, r.text)
            assert r.json()["resourceType"] == "OperationOutcome"
        assert http.delete(f"/{created}").status_code in (200, 204)
    with e2e.http(e2e.tokens["seed"]) as admin:
        after = admin.get("/Observation/obs-b1").json()
        assert after["status"] == "final" and after["meta"]["versionId"] == before["meta"]["versionId"]
        for marker in ("tx-update-b", "tx-create-b", "tx-create-b-itself"):
            found = admin.get("/Observation", params={"identifier": f"urn:e2e|{marker}"}).json()
            assert found["total"] == 0, marker
        assert admin.get(f"/{created}").status_code == 410  # the control's probe, deleted


def test_expired_tampered_and_revoked_tokens_are_refused(e2e: E2E) -> None:
    path = f"/Patient/{A}"
    with e2e.http(e2e.tokens["expired"]) as http:
        _assert_invalid_token(http.get(path), "expired")

    header, payload, signature = e2e.tokens["pa"].split(".")
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    with e2e.http(f"{header}.{payload}.{flipped}") as http:
        _assert_invalid_token(http.get(path), "signature")
    # The claims tampered with instead (another patient), signature kept: refused too.
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "patient": B}).encode()).rstrip(b"=").decode()
    with e2e.http(f"{header}.{forged}.{signature}") as http:
        _assert_invalid_token(http.get(f"/Patient/{B}"), "signature")
    with e2e.http() as http:  # no token at all
        anonymous = http.get(path)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")

    token = e2e.tokens["revocable"]
    with e2e.http(token) as http:
        assert http.get(path).status_code == 200
        revoked = httpx.post(
            f"{e2e.base}/auth/revoke",
            data={"token": token, "token_type_hint": "access_token"},
            auth=(EHR_CLIENT, e2e.ehr_secret),
            timeout=30,
        )
        assert revoked.status_code == 200, revoked.text
        _assert_invalid_token(http.get(path), "revoked")
        _assert_invalid_token(http.get("/Observation"), "revoked")
    # The revocation endpoint authenticates its caller: a wrong secret revokes nothing.
    wrong = httpx.post(
        f"{e2e.base}/auth/revoke", data={"token": e2e.tokens["pa"]}, auth=(EHR_CLIENT, "not-the-secret"), timeout=30
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    with e2e.http(e2e.tokens["pa"]) as http:
        assert http.get(path).status_code == 200

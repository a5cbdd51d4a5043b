"""Scope enforcement on every interaction (SMART App Launch 2.2 scopes), on both stores.

Tokens here come from a stand-in verifier (claims as given, no signature): what is tested is the
resource server — 401/403/404 semantics, patient-compartment confinement, granular scopes — on reads,
the read fast path, searches (totals, _include, _revinclude, chains, _has), history, operations,
batch/transaction entries, PATCH and $export. tests/test_auth_*.py test real signed tokens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import FHIR_BASE

from fhir_server.app import create_app
from fhir_server.config import Settings

FHIR = "application/fhir+json"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


class StandInVerifier:
    """``t.<base64 claims>`` tokens; ``revoked`` jtis; audience checked like the real one."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()

    def verify_access_token(self, token: str, audience: str) -> dict:
        if not token.startswith("t."):
            raise ValueError("not a token")
        claims = json.loads(base64.urlsafe_b64decode(token[2:]))
        if claims.get("aud") != audience:
            raise ValueError("wrong audience")
        return claims

    def is_revoked(self, jti: str) -> bool:
        return jti in self.revoked


_serial = iter(range(1_000_000))


def token(scope: str, **claims) -> dict[str, str]:
    body = {"aud": FHIR_BASE, "client_id": "app", "sub": "user", "scope": scope, "exp": int(time.time()) + 300,
            "jti": f"jti-{next(_serial)}", **claims}  # fmt: skip
    raw = base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
    return {"Authorization": f"Bearer t.{raw}"}


def patient(id_: str, family: str) -> dict:
    return {"resourceType": "Patient", "id": id_, "name": [{"family": family}]}


def observation(id_: str, pid: str, category: str = "vital-signs", performer: str | None = None) -> dict:
    obs = {
        "resourceType": "Observation", "id": id_, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": category}]}],
        "code": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"},
    }  # fmt: skip
    if performer:
        obs["performer"] = [{"reference": performer}]
    return obs


SEED = [
    patient("anne", "Martin"),
    patient("bruno", "Bernard"),
    patient("chloe", "Martin"),
    {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Durand"}]},
    observation("a-vital", "anne", performer="Practitioner/doc"),
    observation("a-lab", "anne", "laboratory"),
    observation("b-vital", "bruno", performer="Practitioner/doc"),
    observation("c-vital", "chloe"),
    {"resourceType": "DocumentReference", "id": "a-doc", "status": "current", "subject": {"reference": "Patient/anne"},
     "content": [{"attachment": {"url": "Binary/a-bin", "contentType": "text/plain"}}]},
    {"resourceType": "Binary", "id": "a-bin", "contentType": "text/plain", "data": "YQ==",
     "securityContext": {"reference": "DocumentReference/a-doc"}},
    {"resourceType": "Binary", "id": "b-bin", "contentType": "text/plain", "data": "Yg==",
     "securityContext": {"reference": "Patient/bruno"}},
]  # fmt: skip


@contextlib.asynccontextmanager
async def secured(store_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, StandInVerifier]]:
    app = create_app(Settings(store=store_url, auth=False, load_definitions=False))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        for resource in SEED:  # seeded while access is open
            r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        verifier = StandInVerifier()
        app.state.auth = verifier
        yield c, verifier


def ids(bundle: dict, mode: str | None = None) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if mode is None or e["search"]["mode"] == mode)


ANNE = {"patient": "anne"}


async def test_tokens_are_required_and_checked(store_url):
    async with secured(store_url) as (c, verifier):
        missing = await c.get("/Patient/anne")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="fhir-server"'
        assert missing.json()["issue"][0]["code"] == "login"
        for bad in ({"Authorization": "Bearer nonsense"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
            r = await c.get("/Patient/anne", headers=bad)
            assert r.status_code == 401
        wrong_audience = token("system/*.rs", aud="https://elsewhere.example/fhir")
        r = await c.get("/Patient/anne", headers=wrong_audience)
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        expired = token("system/*.rs", exp=int(time.time()) - 5)
        assert (await c.get("/Patient/anne", headers=expired)).status_code == 401
        # Discovery stays public: a client reads the CapabilityStatement before it has a token.
        assert (await c.get("/metadata")).status_code == 200
        # Revocation is seen (at most REVOCATION_RECHECK_SECONDS later in other processes).
        headers = token("system/*.rs")
        assert (await c.get("/Patient/anne", headers=headers)).status_code == 200
        jti = json.loads(base64.urlsafe_b64decode(headers["Authorization"][9:]))["jti"]
        verifier.revoked.add(jti)
        c._transport.app.authenticate.forget(jti)  # what the revocation endpoint of this process does
        assert (await c.get("/Patient/anne", headers=headers)).status_code == 401


async def test_patient_token_reads_only_its_patient(store_url):
    async with secured(store_url) as (c, _):
        h = token("patient/*.rs", **ANNE)
        assert (await c.get("/Patient/anne", headers=h)).status_code == 200
        assert (await c.get("/Observation/a-vital", headers=h)).status_code == 200
        # Another patient's data reads as unknown (404), not forbidden: its existence is not disclosed.
        for path in ("/Patient/bruno", "/Observation/b-vital", "/Observation/b-vital/_history/1",
                     "/Observation/b-vital/_history", "/Patient/bruno/$everything", "/Observation/b-vital/$meta",
                     "/Binary/b-bin"):  # fmt: skip
            r = await c.get(path, headers=h)
            assert r.status_code == 404, (path, r.status_code)
            assert "bruno" not in r.text.replace("Patient/bruno", "").replace("b-vital", "") or r.status_code == 404
        # Shared reference data outside the compartment stays readable.
        assert (await c.get("/Practitioner/doc", headers=h)).status_code == 200
        # Binary through its securityContext (a DocumentReference of the patient).
        assert (await c.get("/Binary/a-bin", headers=h)).status_code == 200


async def test_patient_token_searches_are_confined_inside_the_query(store_url):
    async with secured(store_url) as (c, _):
        h = token("patient/*.rs", **ANNE)
        found = (await c.get("/Observation", headers=h)).json()
        assert ids(found) == ["a-lab", "a-vital"] and found["total"] == 2
        count = (await c.get("/Observation?_summary=count", headers=h)).json()
        assert count["total"] == 2
        assert ids((await c.get("/Patient", headers=h)).json()) == ["anne"]
        # Chains and _has cannot probe another patient.
        assert ids((await c.get("/Observation?subject:Patient.family=Bernard", headers=h)).json()) == []
        assert ids((await c.get("/Patient?_has:Observation:subject:_id=b-vital", headers=h)).json()) == []
        assert ids((await c.get("/Patient?_has:Observation:subject:_id=a-vital", headers=h)).json()) == ["anne"]
        # Compartment search of someone else: empty.
        assert ids((await c.get("/Patient/bruno/Observation", headers=h)).json()) == []
        # _include / _revinclude never return what the token may not read.
        bundle = (await c.get("/Practitioner?_revinclude=Observation:performer", headers=h)).json()
        assert ids(bundle, "match") == ["doc"] and ids(bundle, "include") == ["a-vital"]
        bundle = (await c.get("/Observation?_include=Observation:subject&_include=Observation:performer",
                              headers=h)).json()  # fmt: skip
        assert ids(bundle, "include") == ["anne", "doc"]
        # POST _search gives the same answer.
        form = {**h, "Content-Type": "application/x-www-form-urlencoded"}
        assert ids((await c.post("/Observation/_search", content="status=final", headers=form)).json()) == [
            "a-lab",
            "a-vital",
        ]
        everything = (await c.get("/Patient/anne/$everything", headers=h)).json()
        assert "b-vital" not in ids(everything) and "a-vital" in ids(everything)
        # Type and system history list versions a compartment constraint cannot test: refused.
        assert (await c.get("/Observation/_history", headers=h)).status_code == 403
        assert (await c.get("/_history", headers=h)).status_code == 403
        assert (await c.get("/Observation/a-vital/_history", headers=h)).status_code == 200


async def test_scopes_limit_types_and_interactions(store_url):
    async with secured(store_url) as (c, _):
        h = token("patient/Observation.rs", **ANNE)
        r = await c.get("/Patient/anne", headers=h)
        assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
        assert (await c.get("/Condition", headers=h)).status_code == 403
        # Includes of types the token cannot read are silently empty.
        bundle = (await c.get("/Observation?_include=Observation:subject", headers=h)).json()
        assert ids(bundle, "include") == []
        new = observation("x", "anne")
        del new["id"]
        assert (await c.post("/Observation", json=new, headers=h)).status_code == 403
        assert (await c.delete("/Observation/a-vital", headers=h)).status_code == 403
        # v1 scope syntax: patient/*.read = rs.
        v1 = token("patient/*.read", **ANNE)
        assert (await c.get("/Patient/anne", headers=v1)).status_code == 200
        assert (await c.put("/Patient/anne", json=patient("anne", "X"), headers=v1)).status_code == 403
        # No patient in the token: patient scopes reach nothing.
        lost = token("patient/*.rs")
        assert (await c.get("/Patient/anne", headers=lost)).status_code == 404
        assert ids((await c.get("/Observation", headers=lost)).json()) == []


async def test_granular_scope_narrows_to_its_criteria(store_url):
    async with secured(store_url) as (c, _):
        h = token(f"patient/Observation.rs?category={VITALS}", **ANNE)
        assert ids((await c.get("/Observation", headers=h)).json()) == ["a-vital"]
        assert (await c.get("/Observation/a-lab", headers=h)).status_code == 404
        assert (await c.get("/Observation/a-vital", headers=h)).status_code == 200


async def test_patient_writes_stay_in_the_compartment(store_url):
    async with secured(store_url) as (c, _):
        h = token("patient/Observation.cruds patient/Patient.rs", **ANNE)
        mine = observation("new-a", "anne")
        del mine["id"]
        created = await c.post("/Observation", json=mine, headers=h)
        assert created.status_code == 201
        theirs = observation("new-b", "bruno")
        del theirs["id"]
        refused = await c.post("/Observation", json=theirs, headers=h)
        assert refused.status_code == 403
        # Updating another patient's resource: unknown; moving mine to another patient: refused.
        assert (await c.put("/Observation/b-vital", json=observation("b-vital", "anne"), headers=h)).status_code == 404
        assert (await c.put("/Observation/a-vital", json=observation("a-vital", "bruno"), headers=h)).status_code == 403
        patch = [{"op": "replace", "path": "/subject/reference", "value": "Patient/bruno"}]
        patch_headers = {**h, "Content-Type": "application/json-patch+json"}
        r = await c.patch("/Observation/a-vital", json=patch, headers=patch_headers)
        assert r.status_code == 403
        assert (await c.delete("/Observation/b-vital", headers=h)).status_code == 404
        # A transaction with one foreign entry fails whole, nothing written.
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {**mine, "status": "preliminary"},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": observation("b-vital", "bruno") | {"status": "amended"},
             "request": {"method": "PUT", "url": "Observation/b-vital"}},
        ]}  # fmt: skip
        r = await c.post("/", json=bundle, headers=h)
        assert r.status_code == 404, r.text
        # A conditional reference cannot resolve to another patient either.
        probe = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {**mine, "subject": {"reference": "Patient?family=Bernard"}},
             "request": {"method": "POST", "url": "Observation"}}]}  # fmt: skip
        r = await c.post("/", json=probe, headers=h)
        assert r.status_code in (400, 404), r.text
        # A batch reports the refusal per entry and goes on.
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": theirs, "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": "Observation/b-vital"}},
            {"request": {"method": "GET", "url": "Observation?status=preliminary"}},
            {"request": {"method": "GET", "url": "Observation/a-vital"}},
        ]}  # fmt: skip
        result = (await c.post("/", json=batch, headers=h)).json()
        statuses = [e["response"]["status"][:3] for e in result["entry"]]
        assert statuses == ["403", "404", "200", "200"]
        assert result["entry"][2]["resource"].get("total", 0) == 0
        # Nothing of the refused writes exists.
        admin = token("system/*.rs")
        assert (await c.get("/Observation/b-vital", headers=admin)).json()["status"] == "final"
        assert (await c.get("/Observation?status=preliminary", headers=admin)).json()["total"] == 0
        assert (await c.get("/Observation?subject=Patient/bruno", headers=admin)).json()["total"] == 1


async def test_system_and_user_scopes(store_url):
    async with secured(store_url) as (c, _):
        system = token("system/*.rs", sub="backend", client_id="backend")
        assert (await c.get("/Patient/bruno", headers=system)).status_code == 200  # fast path
        assert (await c.get("/Observation", headers=system)).json()["total"] == 4
        assert (await c.get("/_history", headers=system)).status_code == 200
        assert (await c.post("/Patient", json=patient("x", "Y"), headers=system)).status_code == 403
        practitioner = token("user/*.cruds", fhirUser="Practitioner/doc")
        # A professional reaches a record only once the patient authorised them (tests/test_policy.py).
        assert (await c.get("/Observation/b-vital", headers=practitioner)).status_code == 404
        # A guardian (user scopes, RelatedPerson) reaches the patients they manage, and no one else.
        guardian = token("user/*.rs", fhirUser="RelatedPerson/r1", managed_patients=["anne", "chloe"])
        assert ids((await c.get("/Patient", headers=guardian)).json()) == ["anne", "chloe"]
        assert ids((await c.get("/Observation", headers=guardian)).json()) == ["a-lab", "a-vital", "c-vital"]
        assert (await c.get("/Patient/bruno", headers=guardian)).status_code == 404


async def test_export_is_confined_and_owned(store_url, tmp_path):
    async with secured(store_url) as (c, _):
        c._transport.app.state.exports.directory = tmp_path  # keep files in the test's directory
        h = token("patient/*.rs", **ANNE, client_id="app-a", sub="a")
        kick = await c.get("/Patient/$export?_type=Patient,Observation", headers={**h, "Prefer": "respond-async"})
        assert kick.status_code == 202, kick.text
        status_url = kick.headers["content-location"].removeprefix(FHIR_BASE)
        other = token("patient/*.rs", patient="bruno", client_id="app-b", sub="b")
        assert (await c.get(status_url, headers=other)).status_code == 404
        for _ in range(200):
            status = await c.get(status_url, headers=h)
            if status.status_code == 200:
                break
            await __import__("asyncio").sleep(0.05)
        manifest = status.json()
        assert manifest["requiresAccessToken"] is True
        lines = []
        for output in manifest["output"]:
            path = output["url"].removeprefix(FHIR_BASE)
            assert (await c.get(path, headers=other)).status_code == 404
            lines += [json.loads(line) for line in (await c.get(path, headers=h)).text.splitlines()]
        assert sorted(r["id"] for r in lines) == ["a-lab", "a-vital", "anne"]
        forbidden = await c.get("/Patient/$export?_type=Condition", headers={**token("patient/Observation.rs", **ANNE),
                                                                            "Prefer": "respond-async"})  # fmt: skip
        assert forbidden.status_code == 403


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("patient/Observation.rs", ("patient", "Observation", "rs")),
        ("user/*.cruds", ("user", "*", "cruds")),
        ("system/Patient.read", ("system", "Patient", "rs")),
        ("patient/*.write", ("patient", "*", "cud")),
        ("patient/*.*", ("patient", "*", "cruds")),
        ("patient/Observation.sr", None),  # v2 letters must keep the c-r-u-d-s order
        ("patient/Observation.read?category=x", None),  # granular criteria are v2 only
        ("openid", None),
        ("launch/patient", None),
        ("nurse/Observation.rs", None),
    ],
)
def test_scope_grammar(scope, expected):
    from fhir_server.security.scopes import parse_scope

    grant = parse_scope(scope)
    if expected is None:
        assert grant is None
    else:
        assert (grant.context, grant.type, "".join(c for c in "cruds" if c in grant.permissions)) == expected


async def test_browser_apps_get_cors_before_authentication(store_url):
    """SMART apps run on their own origin: preflights carry no token and must be answered."""
    async with secured(store_url) as (c, _):
        origin = {"Origin": "https://app.example"}
        asks = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
        preflight = await c.options("/Patient/anne", headers={**origin, **asks})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        read = await c.get("/Patient/anne", headers={**origin, **token("system/*.rs")})
        assert read.status_code == 200 and read.headers["access-control-allow-origin"] == "*"
        assert "etag" in read.headers["access-control-expose-headers"].lower()
        refused = await c.get("/Patient/anne", headers=origin)
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"

"""Every interaction leaves exactly the AuditEvents it should (issue 11), on both stores: a table of
interactions, each run by a caller of the policy scenario (tests/test_policy.py), then the new AuditEvents
read from the raw store and compared with what the table says: how many, subtype, action, outcome, the
patients and resources named, the purpose of use, the request id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from conftest import FHIR_BASE
from test_access_control import StandInVerifier, token
from test_policy import directory, ps_token, record

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.policy import codes
from fhir_server.store.base import StoreQuery

FHIR = "application/fhir+json"
LONG = {"exp": int(time.time()) + 24 * 3600}  # minted at import: valid however long the suite runs
SYSTEM = token("system/*.cruds", client_id="feed", sub="feed", **LONG)
LEA = token("patient/*.cruds", client_id="mes-app", sub="lea-sub", fhirUser="Patient/lea", patient="lea", **LONG)


@dataclass
class Trail:
    client: httpx.AsyncClient
    app: object
    seen: set[str] = field(default_factory=set)

    async def new(self) -> list[dict]:
        """The AuditEvents written since the last call (oldest first)."""
        store = self.app.state.context.store
        found = [json.loads(v.body) for v in await store.search(StoreQuery("AuditEvent"), 10_000)]
        fresh = [e for e in found if e["id"] not in self.seen]
        self.seen.update(e["id"] for e in fresh)
        return sorted(fresh, key=lambda e: (e["recorded"], e["id"]))


@contextlib.asynccontextmanager
async def audited_server(store_url: str) -> AsyncIterator[Trail]:
    app = create_app(Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0))
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 4711))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        for resource in directory() + record():  # seeded while access is open (no caller: no trace)
            r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        app.state.auth = StandInVerifier()
        trail = Trail(c, app)
        assert await trail.new() == [], "unauthenticated seeding leaves no trace"
        yield trail


@pytest.fixture
async def trail(store_url: str) -> AsyncIterator[Trail]:
    async with audited_server(store_url) as t:
        yield t


def subtype(event: dict) -> str:
    return event["subtype"][0]["code"]


def patients(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", ()) if e.get("role", {}).get("code") == "1"]


def resources(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", ()) if e.get("role", {}).get("code") == "4"]


def query_of(event: dict) -> str | None:
    for e in event.get("entity", ()):
        if "query" in e:
            return base64.b64decode(e["query"]).decode()
    return None


def purpose(event: dict) -> set[str]:
    return {c["code"] for p in event.get("purposeOfEvent", ()) for c in p.get("coding", ())}


def bare(ref: str) -> str:
    return ref.split("/_history/")[0]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    url: str
    headers: dict
    status: int
    events: list[tuple[str, str, list[str], list[str]]]  # (subtype, action, patients, bare resources) per event
    body: object = None
    outcome: str = "0"


MED = ps_token("med", **LONG)
PATCH = [{"op": "replace", "path": "/status", "value": "superseded"}]
CASES = [
    Case("read (fast path)", "GET", "/DocumentReference/lea-cr", MED, 200,
         [("read", "R", ["Patient/lea"], ["DocumentReference/lea-cr"])]),
    Case("read (full route)", "GET", "/DocumentReference/lea-cr?_format=json", MED, 200,
         [("read", "R", ["Patient/lea"], ["DocumentReference/lea-cr"])]),
    Case("vread", "GET", "/DocumentReference/lea-cr/_history/1", MED, 200,
         [("vread", "R", ["Patient/lea"], ["DocumentReference/lea-cr"])]),
    Case("read of the patient", "GET", "/Patient/lea", MED, 200, [("read", "R", ["Patient/lea"], ["Patient/lea"])]),
    Case("refused read (invisible: 404)", "GET", "/DocumentReference/lea-resid", MED, 404,
         [("read", "R", [], ["DocumentReference/lea-resid"])], outcome="4"),
    Case("binary, its patient from the securityContext", "GET", "/Binary/bin-lea-cr", MED, 200,
         [("read", "R", ["Patient/lea"], ["Binary/bin-lea-cr"])]),
    Case("search, one event per patient on the page", "GET", "/Immunization?_sort=_id", SYSTEM, 200,
         [("search-type", "E", ["Patient/lea"], ["Immunization/lea-imm"]),
          ("search-type", "E", ["Patient/max"], ["Immunization/max-imm"])]),
    Case("search with no match", "GET", "/Immunization?patient=nina", SYSTEM, 200, [("search-type", "E", [], [])]),
    Case("system search", "GET", "/?_type=Immunization&patient=max", SYSTEM, 200,
         [("search-system", "E", ["Patient/max"], ["Immunization/max-imm"])]),
    Case("history of a type", "GET", "/Immunization/_history?_count=1", SYSTEM, 200,
         [("history-type", "R", ["Patient/max"], ["Immunization/max-imm"])]),
    Case("compartment search", "GET", "/Patient/lea/Immunization", MED, 200,
         [("search-compartment", "E", ["Patient/lea"], ["Immunization/lea-imm"])]),
    Case("history of an instance", "GET", "/Observation/lea-weight/_history", MED, 200,
         [("history-instance", "R", ["Patient/lea"], ["Observation/lea-weight"])]),
    Case("$everything", "GET", "/Patient/max/$everything?_type=Immunization", SYSTEM, 200,
         [("operation", "E", ["Patient/max"], ["Immunization/max-imm"])]),
    Case("create", "POST", "/Observation", MED, 201,
         [("create", "C", ["Patient/lea"], ["Observation/*"])],
         body={"resourceType": "Observation", "status": "final", "code": {"text": "taille"},
               "subject": {"reference": "Patient/lea"}}),
    Case("update of a Consent by the patient", "PUT", "/Consent/permit-kine", LEA, 200,
         [("update", "U", ["Patient/lea"], ["Consent/permit-kine"])], body="consent"),
    Case("patch", "PATCH", "/DocumentReference/lea-cr", MED | {"Content-Type": "application/json-patch+json"}, 200,
         [("patch", "U", ["Patient/lea"], ["DocumentReference/lea-cr"])], body=PATCH),
    Case("delete", "DELETE", "/Observation/lea-weight", SYSTEM, 204,
         [("delete", "D", ["Patient/lea"], ["Observation/lea-weight"])]),
    Case("refused write (404), nothing written", "DELETE", "/Immunization/max-imm",
         LEA | {"X-Request-Id": "r-1"}, 404, [("delete", "D", [], ["Immunization/max-imm"])], outcome="4"),
    Case("transaction: each entry in its unit of work, nothing else", "POST", "/", SYSTEM, 200,
         [("create", "C", ["Patient/max"], ["Observation/*"]), ("update", "U", ["Patient/nina"], ["Observation/n1"])],
         body={"resourceType": "Bundle", "type": "transaction", "entry": [
             {"request": {"method": "POST", "url": "Observation"},
              "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "a"},
                           "subject": {"reference": "Patient/max"}}},
             {"request": {"method": "PUT", "url": "Observation/n1"},
              "resource": {"resourceType": "Observation", "id": "n1", "status": "final", "code": {"text": "b"},
                           "subject": {"reference": "Patient/nina"}}}]}),
    Case("batch read entry", "POST", "/", SYSTEM, 200, [("batch", "E", ["Patient/max"], ["Immunization/max-imm"])],
         body={"resourceType": "Bundle", "type": "batch", "entry": [
             {"request": {"method": "GET", "url": "Immunization/max-imm"}}]}),
    Case("reading the audit log: Audit Log Used, no patient", "GET", "/AuditEvent?patient=lea",
         token("system/AuditEvent.rs", client_id="auditor", sub="auditor", **LONG), 200,
         [("search-type", "E", [], [])]),
    Case("the patient reading their own trail", "GET", "/AuditEvent?patient=lea", LEA, 200, []),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_each_interaction_leaves_exactly_its_audit_events(trail: Trail, case: Case):
    body = case.body
    if body == "consent":
        body = (await trail.client.get("/Consent/permit-kine", headers=SYSTEM)).json()
        body["status"] = "inactive"
    await trail.new()  # forget what preparing the case traced
    kwargs = {"json": body} if body is not None and not isinstance(body, list) else {}
    if isinstance(body, list):
        kwargs = {"content": json.dumps(body)}
    r = await trail.client.request(case.method, case.url, headers=case.headers, **kwargs)
    assert r.status_code == case.status, r.text
    events = await trail.new()
    named = {x for *_, rs in case.events for x in rs}

    def shown(ref: str) -> str:  # a server-assigned id matches "Type/*"
        ref = bare(ref)
        wildcard = f"{ref.split('/')[0]}/*"
        return wildcard if ref not in named and wildcard in named else ref

    got = [(subtype(e), e["action"], patients(e), [shown(x) for x in resources(e)]) for e in events]
    assert sorted(got) == sorted(case.events), json.dumps(events, indent=1)[:3000]
    for event in events:
        assert event["outcome"] == case.outcome
        assert event["meta"]["profile"] == [
            "https://interop.esante.gouv.fr/ig/fhir/tde/StructureDefinition/tde-auditevent"
        ]
        assert event["source"]["observer"]["identifier"]["value"] == FHIR_BASE
        app = [a for a in event["agent"] if a["type"]["coding"][0]["code"] == "110150"]
        assert app and app[0]["network"]["address"] == "192.0.2.7"
        if case.headers is MED or case.headers.get("Authorization") == MED["Authorization"]:
            person = event["agent"][0]
            assert person["who"]["identifier"] == {"system": codes.ID_NAT_PS, "value": "med"}
            assert purpose(event) >= {"TREAT", "normal"}
        if "X-Request-Id" in case.headers:
            assert {"value": case.headers["X-Request-Id"]} in [e["what"].get("identifier") for e in event["entity"]]
        if case.name.startswith("reading the audit log"):
            assert event["type"]["code"] == "110101"
    wrote = case.method in ("POST", "PUT", "PATCH") and case.status < 300 and case.url != "/"
    if wrote or "transaction" in case.name:
        for event in events:  # writes name the version they made
            assert all("/_history/" in x for x in resources(event))


async def test_a_search_traces_its_query_and_each_page(trail: Trail):
    r = await trail.client.get("/DocumentReference?subject=Patient/lea&_count=2", headers=ps_token("gp"))
    assert r.status_code == 200
    first = await trail.new()
    assert {query_of(e) for e in first} == {"subject=Patient/lea&_count=2"}
    assert sum(len(resources(e)) for e in first) == 2
    next_url = next(link["url"] for link in r.json()["link"] if link["relation"] == "next")
    r = await trail.client.get(next_url, headers=ps_token("gp"))
    assert r.status_code == 200
    second = await trail.new()
    assert second and sum(len(resources(e)) for e in second) == len(r.json()["entry"])
    assert {bare(x) for e in first for x in resources(e)}.isdisjoint({bare(x) for e in second for x in resources(e)})
    r = await trail.client.post("/DocumentReference/_search", data={"subject": "Patient/lea"}, headers=ps_token("gp"))
    assert r.status_code == 200
    assert {query_of(e) for e in await trail.new()} == {"subject=Patient%2Flea"}  # as received


async def test_bris_de_glace_is_traced_with_its_justification(trail: Trail):
    why = "Patiente inconsciente aux urgences"
    r = await trail.client.get("/DocumentReference/lea-cr", headers=ps_token("stranger", codes.BRIS_DE_GLACE,
                                                                            justification=why))  # fmt: skip
    assert r.status_code == 200
    (event,) = await trail.new()
    assert purpose(event) == {"BTG", "bris_de_glace"}
    assert event["purposeOfEvent"][0]["text"] == why
    assert patients(event) == ["Patient/lea"]


async def test_a_rolled_back_transaction_leaves_no_write_trace(trail: Trail):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "a"},
                      "subject": {"reference": "Patient/max"}}},
        {"request": {"method": "DELETE", "url": "AuditEvent/x"}}]}  # fmt: skip
    r = await trail.client.post("/", json=bundle, headers=SYSTEM)
    assert r.status_code == 405
    (event,) = await trail.new()
    assert (subtype(event), event["outcome"], resources(event)) == ("transaction", "4", [])
    assert (await trail.client.get("/Observation?subject=Patient/max", headers=SYSTEM)).json().get("total") == 0


# --- the patient's activity history ------------------------------------------------------------------------------
MUM = token(
    "user/*.rs", client_id="mes-app", sub="mum-sub", fhirUser="RelatedPerson/mum", managed_patients=["lea"], **LONG
)


async def test_the_activity_history_is_the_patients_own_labelled_and_paged(trail: Trail):
    c = trail.client
    assert (await c.get("/DocumentReference/lea-cr", headers=MED)).status_code == 200
    why = "Patiente inconsciente"
    btg = ps_token("stranger", codes.BRIS_DE_GLACE, justification=why)
    assert (await c.get("/DocumentReference/lea-cr", headers=btg)).status_code == 200
    assert (await c.get("/Immunization/max-imm", headers=SYSTEM)).status_code == 200  # Max's, not Léa's
    doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/lea"},
           "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
           "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/x"}}]}  # fmt: skip
    assert (await c.post("/DocumentReference", json=doc, headers=MED)).status_code == 201
    r = await c.get("/Patient/lea/$activity?lang=en&_count=2", headers=LEA)
    assert r.status_code == 200, r.text
    page = r.json()
    lines = [e["resource"]["text"]["div"] for e in page["entry"]]
    groups = [e["resource"]["extension"][-1]["valueCoding"]["code"] for e in page["entry"]]
    assert groups == ["document", "professional-access"]  # newest first: the deposit, then the bris de glace
    assert "added 1 document(s)" in lines[0] and "Médecin" in lines[0]
    assert "break-the-glass" in lines[1] and why in lines[1]
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    assert "lang=en" in next_url
    older = (await c.get(next_url, headers=LEA)).json()
    seen = [e["resource"]["id"] for e in page["entry"] + older["entry"]]
    assert len(seen) == len(set(seen))
    fr = (await c.get("/Patient/lea/$activity", headers=LEA | {"Accept-Language": "fr-FR,fr;q=0.9"})).json()
    every = [e["resource"] for e in fr["entry"]]
    assert any("a consulté 1 document(s)" in e["text"]["div"] for e in every)
    assert all("Patient/lea" in json.dumps(e) for e in every) and not any("max-imm" in json.dumps(e) for e in every)
    # the representative sees it too; another patient's history is unknown; professionals do not read it
    assert (await c.get("/Patient/lea/$activity", headers=MUM)).json()["total"] == fr["total"]
    assert (await c.get("/Patient/max/$activity", headers=LEA)).status_code == 404
    assert (await c.get("/Patient/lea/$activity", headers=MED)).status_code == 403


# --- what the trail writes ---------------------------------------------------------------------------------------
def test_the_cached_index_entries_of_an_audit_event_are_its_index_entries():
    from fhir_server.audit.events import AUDIT_LOG_USED, LOGIN, USER_AUTHENTICATION, Access, Actor, build_audit_event
    from fhir_server.audit.trace import _prepare
    from fhir_server.search.indexing import index_entries
    from fhir_server.security.principal import Principal

    ps = Actor.from_principal(Principal.from_claims({**json.loads(base64.urlsafe_b64decode(
        MED["Authorization"][9:])), "justification": "urgence"}))  # fmt: skip
    patient = Actor(client_id="mes-app", subject="lea-sub", fhir_user="Patient/lea", purpose_of_use=("PATRQT",))
    accesses = [
        Access(ps, "read", FHIR_BASE, patients=["lea"], resources=["DocumentReference/d/_history/2"], address="::1"),
        Access(ps, "search-type", FHIR_BASE, patients=["lea"], resources=["Observation/o"], query="code=x&_count=2",
               request_id="r-9", outcome="4"),
        Access(patient, "update", FHIR_BASE, patients=["lea"], resources=["Consent/c/_history/3"]),
        Access(ps, "search-type", FHIR_BASE, patients=["lea"], query="patient=lea",
               resources=[f"DocumentReference/d{i}/_history/{i % 3 + 1}" for i in range(40)] + ["Patient/lea"]),
        Access(Actor(client_id="feed"), "operation", FHIR_BASE, operation="everything", details=(("file", "a"),)),
        Access(Actor.os_operator("root"), "operation", FHIR_BASE, operation="purge", event_type=AUDIT_LOG_USED,
               action="D", description="12 purged"),
        Access(ps, "operation", FHIR_BASE, event_type=USER_AUTHENTICATION, subtype=LOGIN, action="E",
               patients=["lea"], description="access token issued"),
    ]  # fmt: skip
    for access in accesses * 2:  # the second time from the cache
        _, entries, body = _prepare(build_audit_event(access))
        assert sorted(entries) == sorted(index_entries(body)), access


async def test_export_kick_off_and_each_file_download_are_traced(trail: Trail):
    c = trail.client
    kick = await c.get("/Patient/$export?_type=Immunization", headers=SYSTEM | {"Prefer": "respond-async"})
    assert kick.status_code == 202, kick.text
    (started,) = await trail.new()
    assert (subtype(started), started["entity"][-1]["name"]) == ("operation", "export")
    status_url = kick.headers["content-location"].removeprefix(FHIR_BASE)
    for _ in range(400):
        status = await c.get(status_url, headers=SYSTEM)
        if status.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert status.status_code == 200
    assert await trail.new() == []  # polling the job's state discloses no data
    outputs = status.json()["output"]
    for output in outputs:
        assert (await c.get(output["url"].removeprefix(FHIR_BASE), headers=SYSTEM)).status_code == 200
    downloads = await trail.new()
    assert len(downloads) == len(outputs) >= 1
    for event in downloads:
        query = next(e for e in event["entity"] if e.get("name") == "export-file")
        assert query["detail"][0]["type"] == "file" and event["outcome"] == "0"


async def test_no_answer_leaves_when_its_trace_cannot_be_written(trail: Trail, monkeypatch):
    async def broken(events):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trail.app.state.audit, "commit", broken)
    r = await trail.client.get("/DocumentReference/lea-cr", headers=MED)
    assert r.status_code == 503 and "lea" not in r.text and "could not be traced" in r.text
    r = await trail.client.get("/DocumentReference?subject=Patient/lea", headers=MED)
    assert r.status_code == 503 and "DocumentReference/" not in r.text

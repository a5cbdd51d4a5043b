"""The audit trail, first parts (issue 11): the AuditEvent builder (TdE / IHE BALP shape, valid R4), searching
built events the ITI-81 way on both stores, patient confinement, and the retention purge (every version and
index entry gone from the raw store, the purge itself traced). Immutability: tests/test_audit_immutability.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import FHIR_BASE, fhir_client
from test_access_control import StandInVerifier, token

from fhir_server.audit import Access, Actor, build_audit_event, outcome_of_status
from fhir_server.audit.events import AUDIT_LOG_USED, TDE_PROFILE
from fhir_server.audit.purge import PurgeRefused, purge_before
from fhir_server.cli import main as cli_main
from fhir_server.instant import date_range
from fhir_server.policy.professional import Professional
from fhir_server.security.principal import Principal
from fhir_server.store import open_store
from fhir_server.validation import validate_resource

TDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ans-examples" / "tde"
DR = Professional("810000000001", "10", "Practitioner/dr", "PractitionerRole/dr-role", "Organization/clinic")
PS_CLAIMS = {"ps": DR.to_claim(), "fhirUser": "PractitionerRole/dr-role", "client_id": "dmp-soft", "sub": "dr-sub",
             "jti": "jti-42", "scope": "user/*.rs access-mode/bris_de_glace",
             "justification": "Patiente inconsciente aux urgences"}  # fmt: skip


def us(instant: str) -> int:
    bounds = date_range(instant)
    assert bounds is not None
    return bounds[0]


def ps_read(patient: str = "anne", when: str = "2025-03-01T10:00:00Z", **principal) -> dict:
    actor = Actor.from_principal(Principal.from_claims({**PS_CLAIMS, **principal}))
    return build_audit_event(
        Access(actor, "read", FHIR_BASE, patients=[patient], resources=[f"DocumentReference/{patient}-doc/_history/2"],
               recorded=us(when), started=us(when) - 1000)
    )  # fmt: skip


def patient_search(patient: str, when: str) -> dict:
    actor = Actor.from_principal(
        Principal.from_claims({"client_id": "mes-app", "sub": f"{patient}-sub", "fhirUser": f"Patient/{patient}",
                               "patient": patient, "scope": "patient/*.rs", "jti": "j"})
    )  # fmt: skip
    return build_audit_event(Access(actor, "search-type", FHIR_BASE, patients=[patient], recorded=us(when)))


def codes(concepts: list[dict]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for concept in concepts for c in concept.get("coding", [concept])}


# --- the shape -------------------------------------------------------------------------------------------


def test_a_professional_read_in_bris_de_glace():
    event = ps_read()
    validate_resource(event)  # valid R4 for the server's own validator
    assert event["meta"]["profile"] == [TDE_PROFILE]
    assert event["type"] == {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                             "display": "RESTful Operation"}  # fmt: skip
    assert event["subtype"] == [
        {"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}
    ]
    assert event["action"] == "R" and event["outcome"] == "0"
    assert event["recorded"] == "2025-03-01T10:00:00.000Z" and event["period"]["start"] == "2025-03-01T09:59:59.999Z"
    person, app = event["agent"]
    id_nat_ps = {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810000000001"}
    assert person["who"] == {"reference": "Practitioner/dr", "identifier": id_nat_ps}
    assert codes(person["role"]) == {
        ("https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante", "10")
    }
    assert person["requestor"] is True and person["altId"] == "dr-sub" and person["policy"] == ["jti-42"]
    assert codes([person["type"]]) == {("http://terminology.hl7.org/CodeSystem/extra-security-role-type", "humanuser")}
    assert app["who"]["identifier"] == {"system": f"{FHIR_BASE}/auth/clients", "value": "dmp-soft"}
    assert app["requestor"] is False
    assert codes([app["type"]]) == {("http://dicom.nema.org/resources/ontology/DCM", "110150")}
    assert event["source"]["observer"]["identifier"]["value"] == FHIR_BASE
    assert codes(event["source"]["type"]) == {("http://terminology.hl7.org/CodeSystem/security-source-type", "4")}
    patient, document = event["entity"]
    assert patient["what"] == {"reference": "Patient/anne"} and patient["role"]["code"] == "1"
    assert document["what"] == {"reference": "DocumentReference/anne-doc/_history/2"}
    assert document["role"]["code"] == "4" and document["type"]["code"] == "2"
    (purpose,) = event["purposeOfEvent"]
    assert ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "BTG") in codes([purpose])
    assert ("https://mos.esante.gouv.fr/NOS/TRE_R248-ModeAcces/FHIR/TRE-R248-ModeAcces", "bris_de_glace") in codes(
        [purpose]
    )
    assert purpose["text"] == "Patiente inconsciente aux urgences"


@pytest.mark.parametrize(("scope", "purpose"), [("user/*.rs", "TREAT"), ("user/*.rs access-mode/centre_15", "ETREAT")])
def test_purpose_follows_the_access_mode(scope, purpose):
    event = ps_read(scope=scope)
    (concept,) = event["purposeOfEvent"]
    assert ("http://terminology.hl7.org/CodeSystem/v3-ActReason", purpose) in codes([concept])
    assert "text" not in concept  # the justification belongs to bris de glace only


def test_patient_and_backend_agents():
    event = patient_search("anne", "2025-03-01T10:00:00Z")
    validate_resource(event)
    person, app = event["agent"]
    assert person["who"] == {"reference": "Patient/anne"} and person["requestor"] is True
    assert app["who"]["identifier"]["value"] == "mes-app" and app["requestor"] is False
    assert event["action"] == "E" and "purposeOfEvent" not in event
    representative = Actor.from_principal(
        Principal.from_claims({"client_id": "mes-app", "sub": "mum", "fhirUser": "RelatedPerson/mum",
                               "managed_patients": ["leo"], "scope": "user/*.rs"})
    )  # fmt: skip
    event = build_audit_event(Access(representative, "read", FHIR_BASE, patients=["leo"], resources=["Patient/leo"]))
    assert event["agent"][0]["who"] == {"reference": "RelatedPerson/mum"}
    assert [e["what"]["reference"] for e in event["entity"]] == ["Patient/leo"]  # the patient once
    backend = Actor.from_principal(Principal.from_claims({"client_id": "feed", "sub": "feed", "scope": "system/*.c"}))
    event = build_audit_event(
        Access(backend, "create", FHIR_BASE, outcome=outcome_of_status(201), patients=["anne"],
               resources=["Observation/o1/_history/1"])
    )  # fmt: skip
    validate_resource(event)
    (app,) = event["agent"]  # a backend service: the application alone, requestor
    assert app["requestor"] is True and event["action"] == "C"


def test_outcomes_and_refusals():
    assert [outcome_of_status(s) for s in (200, 201, 304, 403, 404, 500, 503)] == ["0", "0", "0", "4", "4", "8", "8"]
    actor = Actor(client_id="app")
    failed = build_audit_event(Access(actor, "read", FHIR_BASE, outcome="4", resources=["Patient/x"]))
    assert failed["outcome"] == "4"
    for bad in (
        {"interaction": "browse"},
        {"outcome": "2"},
        {"interaction": "read", "operation": "purge"},
        {"resources": ["Patient"]},
        {"action": "X"},
    ):
        with pytest.raises(ValueError):
            build_audit_event(Access(actor, **{"interaction": "read", "base": FHIR_BASE, **bad}))
    with pytest.raises(ValueError):  # nobody acted
        build_audit_event(Access(Actor(), "read", FHIR_BASE))


def test_no_resource_content_and_tde_constraints():
    """Only references; TdE: one subtype, period.start, at most two agents, each with who."""
    for event in (ps_read(), patient_search("anne", "2025-03-01T10:00:00Z")):
        assert len(event["subtype"]) == 1 and event["period"]["start"]
        assert 1 <= len(event["agent"]) <= 2 and all(a.get("who") for a in event["agent"])
        for entity in event["entity"]:
            assert set(entity) <= {"what", "type", "role", "name", "detail"}
        assert "Inconsciente".lower() not in json.dumps(event["entity"]).lower()


@pytest.mark.skipif(not TDE.is_dir(), reason="the ANS TdE examples are not next to the repository")
def test_key_elements_match_the_tde_examples():
    ours = ps_read()
    for name in ("AuditEvent-TDEAuditEventExample.json", "AuditEvent-TDEAuditEventExample-2.json"):
        example = json.loads((TDE / name).read_text())
        validate_resource(example)
        assert example["meta"]["profile"] == ours["meta"]["profile"]
        assert example["subtype"] == ours["subtype"]  # restful-interaction, one coding
        assert set(example["period"]) >= {"start"} and example["agent"][0]["requestor"] is True
        assert set(example["source"]) >= {"observer"}
        assert set(example) - {"id", "text"} <= set(ours)  # every element they use, we fill
    rest = json.loads((TDE / "AuditEvent-TDEAuditEventExample.json").read_text())
    assert rest["type"] == ours["type"]
    dicom = json.loads((TDE / "AuditEvent-TDEAuditEventExample-2.json").read_text())
    assert dicom["type"] == AUDIT_LOG_USED  # what the purge's own trace uses


# --- searching (ITI-81 style) and confinement, both stores ------------------------------------------------


async def _post_all(client, events: list[dict], headers=None) -> list[str]:
    ids = []
    for event in events:
        r = await client.post("/AuditEvent", json=event, headers=headers)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


async def test_search_built_events(store_url):
    async with fhir_client(store_url) as c:
        a_read, a_search, b_read, old = await _post_all(c, [
            ps_read("anne", "2025-03-01T10:00:00Z"),
            patient_search("anne", "2025-03-02T10:00:00Z"),
            ps_read("bruno", "2025-03-01T11:00:00Z", scope="user/*.rs"),
            ps_read("anne", "2024-01-01T10:00:00Z", scope="user/*.rs access-mode/centre_15"),
        ])  # fmt: skip

        async def found(query: str) -> set[str]:
            r = await c.get(f"/AuditEvent?{query}")
            assert r.status_code == 200, r.text
            return _ids(r.json())

        assert await found("patient=Patient/anne&date=ge2025-03-01&date=le2025-03-31") == {a_read, a_search}
        assert await found("patient=anne") == {a_read, a_search, old}
        assert await found("agent=Practitioner/dr&date=ge2025") == {a_read, b_read}
        assert await found("agent:identifier=urn:oid:1.2.250.1.71.4.2.1|810000000001") == {a_read, b_read, old}
        assert await found("agent=Patient/anne") == {a_search}
        assert await found("type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest") == {
            a_read, a_search, b_read, old
        }  # fmt: skip
        assert await found("subtype=http://hl7.org/fhir/restful-interaction|search-type") == {a_search}
        assert await found("subtype=read&patient=bruno") == {b_read}
        assert await found("entity=DocumentReference/anne-doc") == {a_read, old}
        assert await found("entity-role=1&outcome=0&action=E") == {a_search}
        assert await found("agent-role=10&policy=jti-42") == {a_read, b_read, old}
        r = await c.get(f"/AuditEvent/{a_read}")
        assert r.json()["purposeOfEvent"][0]["text"] == "Patiente inconsciente aux urgences"


async def test_search_by_purpose(tmp_path):
    async with fhir_client(f"sqlite:///{tmp_path / 'fhir.db'}") as c:
        (btg,) = await _post_all(c, [ps_read()])
        r = await c.get("/AuditEvent?purpose=http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG")
        assert r.status_code == 200, r.text
        assert _ids(r.json()) == {btg}


async def test_a_patient_sees_only_their_own_events(store_url):
    async with fhir_client(store_url) as c:
        anne_ids = await _post_all(c, [ps_read("anne"), patient_search("anne", "2025-03-02T10:00:00Z")])
        bruno_ids = await _post_all(c, [ps_read("bruno"), patient_search("bruno", "2025-03-02T10:00:00Z")])
        c._transport.app.state.auth = StandInVerifier()  # type: ignore[attr-defined]
        anne = token("patient/*.rs", patient="anne", fhirUser="Patient/anne")
        r = await c.get("/AuditEvent", headers=anne)
        assert r.status_code == 200, r.text
        assert _ids(r.json()) == set(anne_ids)
        r = await c.get("/AuditEvent?patient=bruno", headers=anne)
        assert r.status_code == 200 and _ids(r.json()) == set()
        r = await c.get("/AuditEvent?_summary=count", headers=anne)
        assert r.json()["total"] == 2
        assert (await c.get(f"/AuditEvent/{bruno_ids[0]}", headers=anne)).status_code == 404
        assert (await c.get(f"/AuditEvent/{anne_ids[0]}", headers=anne)).status_code == 200
        auditor = token("system/AuditEvent.rs")
        r = await c.get("/AuditEvent?_count=50", headers=auditor)
        assert _ids(r.json()) == set(anne_ids + bruno_ids)
        # the patient's token cannot write traces, and no token can change one (test_audit_immutability.py)
        r = await c.post("/AuditEvent", json=ps_read("anne"), headers=anne)
        assert r.status_code == 403


# --- the retention purge ------------------------------------------------------------------------------


def _raw_audit_rows(store_url: str) -> dict[str, int]:
    """What the raw store still holds of AuditEvents, table by table / collection by collection."""
    if store_url.startswith("sqlite:"):
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        try:
            return {
                table: conn.execute(f"SELECT count(*) FROM {table} WHERE type = 'AuditEvent'").fetchone()[0]
                for table in ("resource_version", "resource", "search_index")
            }
        finally:
            conn.close()
    from pymongo import MongoClient

    client: MongoClient = MongoClient(store_url, serverSelectionTimeoutMS=5000)
    try:
        db = client[urlsplit(store_url).path.lstrip("/")]
        return {
            "resource_version": db["resource_version"].count_documents({"t": "AuditEvent"}),
            "resource": db["resource"].count_documents({"t": "AuditEvent"}),
            "resource_idx": db["resource"].count_documents({"t": "AuditEvent", "idx.0": {"$exists": True}}),
        }
    finally:
        client.close()


def _raw_ids(store_url: str) -> set[str]:
    if store_url.startswith("sqlite:"):
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        try:
            rows = conn.execute(
                "SELECT id FROM resource_version WHERE type = 'AuditEvent' UNION SELECT id FROM search_index"
                " WHERE type = 'AuditEvent' UNION SELECT id FROM resource WHERE type = 'AuditEvent'"
            )
            return {row[0] for row in rows}
        finally:
            conn.close()
    from pymongo import MongoClient

    client: MongoClient = MongoClient(store_url, serverSelectionTimeoutMS=5000)
    try:
        db = client[urlsplit(store_url).path.lstrip("/")]
        return {d["i"] for d in db["resource_version"].find({"t": "AuditEvent"})} | {
            d["i"] for d in db["resource"].find({"t": "AuditEvent"})
        }
    finally:
        client.close()


async def test_purge_removes_every_trace_of_old_events(store_url):
    async with fhir_client(store_url) as c:
        old = await _post_all(c, [ps_read("anne", f"2023-0{m}-01T10:00:00Z") for m in range(1, 6)])
        kept = await _post_all(c, [ps_read("anne", "2024-06-01T00:00:00Z"), patient_search("bruno", "2025-01-01")])
        r = await c.put("/Patient/anne", json={"resourceType": "Patient", "id": "anne"})
        assert r.status_code == 201
    assert _raw_ids(store_url) == set(old + kept)
    async with open_store(store_url) as store:
        with pytest.raises(PurgeRefused):
            await purge_before(store, "2999-01-01", base=FHIR_BASE)
        with pytest.raises(PurgeRefused):
            await purge_before(store, "last year", base=FHIR_BASE)
        result = await purge_before(store, "2024-06-01", base=FHIR_BASE, operator="ops-alice")
        assert result.purged == 5
        assert (await store.read_current("Patient", "anne")) is not None  # other types untouched
    remaining = _raw_ids(store_url)
    assert remaining == {*kept, result.trace_id}  # no version, no current pointer, no index entry of the 5
    assert not remaining & set(old)
    async with fhir_client(store_url) as c:
        for id_ in old:
            assert (await c.get(f"/AuditEvent/{id_}")).status_code == 404
            assert (await c.get(f"/AuditEvent/{id_}/_history/1")).status_code == 404
        history = (await c.get("/AuditEvent/_history?_count=100")).json()
        assert {e["resource"]["id"] for e in history.get("entry", [])} == {*kept, result.trace_id}
        trace = (await c.get(f"/AuditEvent/{result.trace_id}")).json()
        validate_resource(trace)
        assert trace["type"] == AUDIT_LOG_USED and trace["action"] == "D"
        assert trace["subtype"][0]["code"] == "operation"
        assert trace["agent"] == [{
            "type": trace["agent"][0]["type"], "requestor": True,
            "who": {"identifier": {"system": "https://github.com/fhir-server/fhir-server/NamingSystem/os-user",
                                   "value": "ops-alice"}, "display": "ops-alice"},
        }]  # fmt: skip
        (entity,) = trace["entity"]
        assert entity["name"] == "purge" and entity["role"]["code"] == "13"
        assert {(d["type"], d["valueString"]) for d in entity["detail"]} == {("purged", "5"), ("before", "2024-06-01")}
        r = await c.get("/AuditEvent?entity-name=purge&action=D")
        assert _ids(r.json()) == {result.trace_id}
    async with open_store(store_url) as store:  # again: nothing left to purge, still traced
        again = await purge_before(store, "2024-06-01", base=FHIR_BASE, operator="ops-alice")
        assert again.purged == 0 and again.trace_id != result.trace_id


def test_cli_audit_purge(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'fhir.db'}"
    assert cli_main(["audit", "purge", "--before", "2024-01-01", "--store", url]) == 2  # no database there
    assert "no database" in capsys.readouterr().err

    import asyncio

    async def seed() -> None:
        async with fhir_client(url) as c:
            await _post_all(c, [ps_read("anne", "2023-01-01T00:00:00Z"), ps_read("anne", "2025-01-01T00:00:00Z")])

    asyncio.run(seed())
    assert (
        cli_main(
            ["audit", "purge", "--before", "2024-01-01", "--store", url, "--base-url", "https://fhir.example.org/fhir"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("purged 1 AuditEvent(s) recorded before 2024-01-01; traced as AuditEvent/")
    assert _raw_audit_rows(url)["resource_version"] == 2  # the 2025 event and the trace
    assert cli_main(["audit", "purge", "--before", "tomorrow", "--store", url]) == 2
    assert "not a FHIR date" in capsys.readouterr().err

"""AuditEvents are immutable (issue 11): update (update-as-create included), PATCH and delete answer 405 on
every path — REST, conditional forms, batch and transaction entries — for every caller, on both stores; the
stored event stays at version 1. Creates stay allowed (see docs/audit.md)."""

from __future__ import annotations

import base64
import json

from conftest import fhir_client
from test_access_control import StandInVerifier, token

from fhir_server.audit import Access, Actor, build_audit_event

BASE = "http://fhir.test"
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
PATCH_OPS = [{"op": "replace", "path": "/outcome", "value": "4"}]
FHIRPATH_PATCH = {
    "resourceType": "Parameters",
    "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "AuditEvent.outcome"},
        {"name": "value", "valueCode": "4"}]}],
}  # fmt: skip


def event(patient: str = "anne") -> dict:
    actor = Actor(client_id="app", subject="u", fhir_user=f"Patient/{patient}")
    return build_audit_event(Access(actor, "read", BASE, patients=[patient], resources=[f"Patient/{patient}"]))


def refused(r, what: str) -> None:
    assert r.status_code == 405, f"{what}: {r.status_code} {r.text}"
    assert r.json()["issue"][0]["code"] == "not-supported"


async def _unchanged(c, id_: str, headers: dict | None = None) -> None:
    r = await c.get(f"/AuditEvent/{id_}", headers=headers)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1" and r.json()["outcome"] == "0"
    history = (await c.get(f"/AuditEvent/{id_}/_history", headers=headers)).json()
    assert history["total"] == 1


async def test_rest_update_patch_delete_are_refused(store_url):
    async with fhir_client(store_url) as c:
        r = await c.post("/AuditEvent", json=event())
        assert r.status_code == 201, r.text  # creates stay allowed
        stored = r.json()
        id_ = stored["id"]
        changed = {**stored, "outcome": "4"}
        refused(await c.put(f"/AuditEvent/{id_}", json=changed), "update")
        refused(await c.put(f"/AuditEvent/{id_}", json=changed, headers={"If-Match": 'W/"1"'}), "update If-Match")
        refused(await c.put("/AuditEvent/new-one", json={**event(), "id": "new-one"}), "update as create")
        refused(await c.put("/AuditEvent?patient=anne", json=changed), "conditional update")
        refused(await c.put("/AuditEvent?patient=nobody", json=event()), "conditional update, no match")
        refused(await c.put(f"/AuditEvent/{id_}", json={"resourceType": "AuditEvent", "id": id_}), "invalid body")
        refused(await c.patch(f"/AuditEvent/{id_}", json=PATCH_OPS, headers=JSON_PATCH), "JSON Patch")
        refused(await c.patch(f"/AuditEvent/{id_}", json=FHIRPATH_PATCH), "FHIRPath Patch")
        refused(await c.patch("/AuditEvent?patient=anne", json=PATCH_OPS, headers=JSON_PATCH), "conditional patch")
        refused(await c.delete(f"/AuditEvent/{id_}"), "delete")
        refused(await c.delete("/AuditEvent/never-was"), "delete of an unknown id")
        refused(await c.delete("/AuditEvent?patient=anne"), "conditional delete")
        refused(await c.delete("/AuditEvent?patient=nobody"), "conditional delete, no match")
        await _unchanged(c, id_)
        assert (await c.get("/AuditEvent/new-one")).status_code == 404
        # other types are not affected
        assert (await c.put("/Patient/anne", json={"resourceType": "Patient", "id": "anne"})).status_code == 201
        assert (await c.delete("/Patient/anne")).status_code == 204


async def test_bundle_entries_are_refused(store_url):
    async with fhir_client(store_url) as c:
        stored = (await c.post("/AuditEvent", json=event())).json()
        id_ = stored["id"]
        patch = {"resourceType": "Binary", "contentType": "application/json-patch+json",
                 "data": base64.b64encode(json.dumps(PATCH_OPS).encode()).decode()}  # fmt: skip
        entries = [
            {"resource": {**stored, "outcome": "4"}, "request": {"method": "PUT", "url": f"AuditEvent/{id_}"}},
            {"resource": {**event(), "id": "b"}, "request": {"method": "PUT", "url": "AuditEvent/b"}},
            {"resource": event(), "request": {"method": "PUT", "url": "AuditEvent?patient=anne"}},
            {"resource": patch, "request": {"method": "PATCH", "url": f"AuditEvent/{id_}"}},
            {"resource": FHIRPATH_PATCH, "request": {"method": "PATCH", "url": "AuditEvent?patient=anne"}},
            {"request": {"method": "DELETE", "url": f"AuditEvent/{id_}"}},
            {"request": {"method": "DELETE", "url": "AuditEvent?patient=anne"}},
        ]
        create = {"resource": event("bruno"), "request": {"method": "POST", "url": "AuditEvent"}}
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [*entries, create]}
        r = await c.post("/", json=batch)
        assert r.status_code == 200, r.text
        statuses = [e["response"]["status"].split()[0] for e in r.json()["entry"]]
        assert statuses[:-1] == ["405"] * len(entries), statuses
        assert statuses[-1] == "201"  # a create in the same batch goes through
        for entry in entries:
            transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": "urn:uuid:5b0c4a4e-0000-4000-8000-000000000001",
                 "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
                 "request": {"method": "POST", "url": "Patient"}},
                entry,
            ]}  # fmt: skip
            refused(await c.post("/", json=transaction), f"transaction {entry['request']}")
        assert (await c.get("/Patient?family=Tx&_summary=count")).json()["total"] == 0  # nothing written
        await _unchanged(c, id_)


async def test_refused_for_every_caller(store_url):
    async with fhir_client(store_url) as c:
        stored = (await c.post("/AuditEvent", json=event())).json()
        id_ = stored["id"]
        c._transport.app.state.auth = StandInVerifier()  # type: ignore[attr-defined]
        for scope, claims in (("system/*.cruds", {}), ("system/AuditEvent.cruds", {}),
                              ("patient/*.cruds", {"patient": "anne", "fhirUser": "Patient/anne"}),
                              ("user/AuditEvent.cud", {})):  # fmt: skip
            headers = token(scope, **claims)
            refused(await c.put(f"/AuditEvent/{id_}", json={**stored, "outcome": "4"}, headers=headers), scope)
            refused(await c.delete(f"/AuditEvent/{id_}", headers=headers), scope)
            refused(await c.patch(f"/AuditEvent/{id_}", json=PATCH_OPS, headers={**JSON_PATCH, **headers}), scope)
        system = token("system/*.cruds")
        r = await c.post("/AuditEvent", json=event("bruno"), headers=system)
        assert r.status_code == 201, r.text
        await _unchanged(c, id_, system)


async def test_meta_operations_do_not_change_an_audit_event(store_url):
    async with fhir_client(store_url) as c:
        event = {"resourceType": "AuditEvent", "type": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                 "code": "110110"}, "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": True}],
                 "source": {"observer": {"display": "fhir-server"}}}  # fmt: skip
        id_ = (await c.post("/AuditEvent", json=event)).json()["id"]
        meta = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"code": "x"}]}}]}
        for op in ("$meta-add", "$meta-delete"):
            assert (await c.post(f"/AuditEvent/{id_}/{op}", json=meta)).status_code == 405, op
        cs = (await c.get("/metadata")).json()
        audit = next(r for r in cs["rest"][0]["resource"] if r["type"] == "AuditEvent")
        assert {i["code"] for i in audit["interaction"]} & {"update", "patch", "delete"} == set()
        assert audit["conditionalDelete"] == "not-supported" and audit["updateCreate"] is False

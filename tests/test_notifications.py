"""The patient's notifications end to end, on both stores (issue 11): each event of the list — a professional's
access (once per professional and day), an emergency access (always, and to the médecin traitant), a document
added or replaced, a privacy choice changed by someone else — becomes a Communication in the patient's
notification centre and an email through a real SMTP server (aiosmtpd), without health details; preferences
turn events off except emergencies; the centre marks read/unread and deletes; the outbox survives a restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from aiosmtpd.controller import Controller
from conftest import FHIR_BASE
from test_access_control import StandInVerifier, token
from test_delivery import Inbox, smtp_server
from test_policy import directory, exported_ids, ps_token, record

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.messaging import codes as messaging
from fhir_server.notify.patient import EVENT_SYSTEM
from fhir_server.policy import codes
from fhir_server.store import open_store
from fhir_server.store.base import StoreQuery

LONG = {"exp": int(time.time()) + 24 * 3600}  # minted at import: valid however long the suite runs
LEA = token("patient/*.cruds", client_id="mes-app", sub="lea-sub", fhirUser="Patient/lea", patient="lea", **LONG)
MUM = token("user/*.rs user/Consent.cruds", client_id="mes-app", sub="mum-sub", fhirUser="RelatedPerson/mum",
            managed_patients=["lea"], **LONG)  # fmt: skip
SYSTEM = token("system/*.cruds", client_id="feed", sub="feed", **LONG)
MED = ps_token("med", **LONG)
DOC = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/lea"},
       "description": "Compte rendu d'IRM cérébrale — suspicion de tumeur",
       "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
       "author": [{"reference": "PractitionerRole/r-med"}],
       "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/x",
                                   "title": "IRM-tumeur.pdf"}}]}  # fmt: skip


@dataclass
class Space:
    client: httpx.AsyncClient
    app: object
    inbox: Inbox

    async def deliver(self) -> int:
        return await self.app.state.deliverer.run_once()

    async def centre(self, headers: dict = LEA, query: str = "") -> list[dict]:
        r = await self.client.get(f"/Communication?recipient=Patient/lea&_sort=-sent{query}", headers=headers)
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", ())]

    def codes(self, notes: list[dict]) -> list[str]:
        return [
            c["coding"][0]["code"] for n in notes for c in n["category"] if c["coding"][0]["system"] == EVENT_SYSTEM
        ]


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    for controller in smtp_server(inbox):
        yield controller, inbox


@contextlib.asynccontextmanager
async def space(store_url: str, smtp: Controller, inbox: Inbox) -> AsyncIterator[Space]:
    settings = Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0,
                        smtp_host="127.0.0.1", smtp_port=smtp.port,
                        portal_url="https://portail.example/mes")  # fmt: skip
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        await app.state.deliverer.stop()  # the test drives delivery (run_once), no background pass
        people = directory() + record()
        for resource in people:
            if resource["resourceType"] == "Patient" and resource["id"] == "lea":
                resource["telecom"] = [{"system": "email", "value": "lea@example.org"}]
            if resource["resourceType"] == "PractitionerRole" and resource["id"] == "r-gp":
                resource["telecom"] = [{"system": "email", "value": "gp@cabinet.example"}]
            r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        app.state.auth = StandInVerifier()
        yield Space(c, app, inbox)


@pytest.fixture
async def mes(store_url: str, smtp_inbox) -> AsyncIterator[Space]:
    async with space(store_url, *smtp_inbox) as s:
        yield s


async def test_a_professionals_access_notifies_once_a_day_by_email(mes: Space):
    for _ in range(3):
        assert (await mes.client.get("/DocumentReference/lea-cr", headers=MED)).status_code == 200
    assert (await mes.client.get("/DocumentReference?subject=Patient/lea", headers=MED)).status_code == 200
    notes = await mes.centre()
    assert mes.codes(notes) == ["professional-access"]
    assert "médecin (n° med)" in notes[0]["payload"][0]["contentString"]
    assert notes[0]["about"][0]["reference"].startswith("AuditEvent/")
    assert await mes.deliver() == 1
    ((to, message, _),) = mes.inbox.messages
    assert to == ["lea@example.org"]
    text = message.get_body(("plain",)).get_content()
    assert "a consulté votre dossier" in text and f"https://portail.example/mes/Communication/{notes[0]['id']}" in text
    # another professional the same day: their own notification
    assert (await mes.client.get("/DocumentReference/lea-cr", headers=ps_token("pharma"))).status_code == 200
    assert mes.codes(await mes.centre()) == ["professional-access"] * 2


async def test_emergency_access_always_notifies_the_patient_and_the_medecin_traitant(mes: Space):
    btg = ps_token("stranger", codes.BRIS_DE_GLACE, justification="Patiente inconsciente")
    assert (await mes.client.get("/DocumentReference/lea-cr", headers=btg)).status_code == 200
    assert (await mes.client.get("/Immunization?patient=lea", headers=btg)).status_code == 200  # same access
    samu = ps_token("med", codes.CENTRE_15)
    assert (await mes.client.get("/Immunization?patient=lea", headers=samu)).status_code == 200
    notes = [n for n in await mes.centre(SYSTEM, "&category=" + f"{EVENT_SYSTEM}|emergency-access")]
    assert len(notes) == 2 and all(n["priority"] == "urgent" for n in notes)
    r = await mes.client.get(f"/Communication?recipient=PractitionerRole/r-gp&category={EVENT_SYSTEM}|emergency-access",
                             headers=SYSTEM)  # fmt: skip
    assert r.json()["total"] == 2
    assert await mes.deliver() == 4
    recipients = sorted(to[0] for to, _, _ in mes.inbox.messages)
    assert recipients == ["gp@cabinet.example"] * 2 + ["lea@example.org"] * 2
    # an emergency notification cannot be turned off
    body = {"resourceType": "Parameters", "parameter": [{"name": "preference", "part": [
        {"name": "event", "valueCode": "emergency-access"}, {"name": "enabled", "valueBoolean": False}]}]}  # fmt: skip
    r = await mes.client.post("/Patient/lea/$notification-preferences", json=body, headers=LEA)
    assert r.status_code == 400 and "cannot be turned off" in r.text


async def test_documents_and_consents_changed_by_others_notify_without_health_details(mes: Space):
    r = await mes.client.post("/DocumentReference", json=DOC, headers=MED)
    assert r.status_code == 201
    doc = r.json()
    doc["status"] = "superseded"
    assert (await mes.client.put(f"/DocumentReference/{doc['id']}", json=doc, headers=MED)).status_code == 200
    consent = (await mes.client.get("/Consent/permit-kine", headers=SYSTEM)).json()
    consent["status"] = "inactive"
    assert (await mes.client.put("/Consent/permit-kine", json=consent, headers=MUM)).status_code == 200
    mine = (await mes.client.get("/Consent/permit-inf", headers=LEA)).json()
    mine["status"] = "inactive"
    assert (await mes.client.put("/Consent/permit-inf", json=mine, headers=LEA)).status_code == 200  # her own
    notes = await mes.centre()
    assert sorted(mes.codes(notes)) == ["consent-changed", "document-added", "document-replaced"]
    await mes.deliver()
    everything = json.dumps(notes) + "".join(m.as_string() for _, m, _ in mes.inbox.messages)
    for secret in ("IRM", "tumeur", "11488-4", "Compte rendu"):
        assert secret not in everything


async def test_a_message_notifies_the_patient_once_without_its_content(mes: Space):
    message = {"resourceType": "Communication", "status": "completed",
               "category": [{"coding": [{"system": messaging.CATEGORY, "code": messaging.MESSAGE}]}],
               "subject": {"reference": "Patient/lea"}, "recipient": [{"reference": "Patient/lea"}],
               "topic": {"text": "Résultats de votre IRM"},
               "payload": [{"contentString": "Pas de tumeur visible"}]}  # fmt: skip
    r = await mes.client.post("/Communication", json=message, headers=MED)
    assert r.status_code == 201, r.text
    notes = await mes.centre()
    assert mes.codes(notes) == ["message-received"]  # one, though two copies were written
    assert await mes.deliver() == 1
    ((to, email, _),) = mes.inbox.messages
    assert to == ["lea@example.org"]
    everything = json.dumps(notes) + email.as_string()
    assert "nouveau message" in everything
    for secret in ("IRM", "tumeur"):
        assert secret not in everything
    # her reply notifies nobody in her centre
    messaging_token = token("patient/*.cruds patient/Communication.cruds", client_id="mes-app", sub="lea-sub",
                            fhirUser="Patient/lea", patient="lea", **LONG)  # fmt: skip
    [mine] = await mes.centre(messaging_token, f"&_tag={messaging.MAILBOX}|{messaging.PATIENT_COPY}")
    answer = {"resourceType": "Communication", "status": "completed", "category": message["category"],
              "subject": {"reference": "Patient/lea"}, "inResponseTo": [{"reference": f"Communication/{mine['id']}"}],
              "payload": [{"contentString": "Merci"}]}  # fmt: skip
    r = await mes.client.post("/Communication", json=answer, headers=messaging_token)
    assert r.status_code == 201, r.text
    assert mes.codes(await mes.centre()) == ["message-received"]


async def test_preferences_turn_events_off_and_the_centre_marks_and_deletes(mes: Space):
    r = await mes.client.get("/Patient/lea/$notification-preferences", headers=MUM)
    assert r.status_code == 200
    assert {p["part"][0]["valueCode"]: p["part"][1]["valueBoolean"] for p in r.json()["parameter"]} == {
        "professional-access": True, "document-added": True, "document-replaced": True, "consent-changed": True,
        "emergency-access": True}  # fmt: skip
    off = {"resourceType": "Parameters", "parameter": [{"name": "preference", "part": [
        {"name": "event", "valueCode": "professional-access"},
        {"name": "enabled", "valueBoolean": False}]}]}  # fmt: skip
    assert (await mes.client.post("/Patient/lea/$notification-preferences", json=off, headers=MUM)).status_code == 403
    assert (await mes.client.post("/Patient/lea/$notification-preferences", json=off, headers=LEA)).status_code == 200
    assert (await mes.client.get("/Patient/max/$notification-preferences", headers=LEA)).status_code == 404
    assert (await mes.client.get("/DocumentReference/lea-cr", headers=MED)).status_code == 200
    assert (await mes.client.post("/DocumentReference", json=DOC, headers=MED)).status_code == 201
    notes = await mes.centre()
    assert mes.codes(notes) == ["document-added"]  # the access is not notified any more
    note = notes[0]
    assert "received" not in note
    r = await mes.client.post(f"/Communication/{note['id']}/$mark-read", headers=LEA)
    assert r.status_code == 200 and r.json()["received"]
    assert await mes.centre(query="&received:missing=true") == []
    r = await mes.client.post(f"/Communication/{note['id']}/$mark-unread", headers=LEA)
    assert r.status_code == 200 and "received" not in r.json()
    assert len(await mes.centre(query="&received:missing=true")) == 1
    # nobody else marks it; the patient deletes it
    assert (await mes.client.post(f"/Communication/{note['id']}/$mark-read", headers=MED)).status_code in (403, 404)
    assert (await mes.client.delete(f"/Communication/{note['id']}", headers=LEA)).status_code == 204
    assert await mes.centre() == []


async def test_the_outbox_survives_a_restart(store_url: str, smtp_inbox):
    smtp, inbox = smtp_inbox
    async with space(store_url, smtp, inbox) as s:
        assert (await s.client.get("/DocumentReference/lea-cr", headers=MED)).status_code == 200
        assert inbox.messages == []  # not delivered before the stop
    store = open_store(store_url)
    await store.start()
    try:
        assert [i.channel for i in await store.outbox_items()] == ["email"]
    finally:
        await store.close()
    settings = Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0,
                        smtp_host="127.0.0.1", smtp_port=smtp.port)  # fmt: skip
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.deliverer.stop()
        assert await app.state.deliverer.run_once() == 1
    assert [to for to, _, _ in inbox.messages] == [["lea@example.org"]]
    store = open_store(store_url)
    await store.start()
    try:
        assert await store.outbox_items() == []
        assert await store.count(StoreQuery("Communication")) == 1
    finally:
        await store.close()


async def test_tracing_and_notifying_log_no_health_data_and_no_token(mes: Space, caplog: pytest.LogCaptureFixture):
    """Everything the trail and the notifications do, at DEBUG: the logs name no token, no justification, no
    email address, no document content (the AuditEvents and the notification centre hold what is needed)."""
    caplog.set_level(logging.DEBUG)
    why = "Patiente inconsciente, suspicion d'AVC"
    btg = ps_token("stranger", codes.BRIS_DE_GLACE, justification=why)
    assert (await mes.client.get("/DocumentReference/lea-cr", headers=btg)).status_code == 200
    assert (await mes.client.post("/DocumentReference", json=DOC, headers=MED)).status_code == 201
    assert (await mes.client.get("/DocumentReference?subject=Patient/lea", headers=MED)).status_code == 200
    assert (await mes.client.get("/DocumentReference/lea-resid", headers=MED)).status_code == 404
    mes.inbox.refuse.add("lea@example.org")  # a failed delivery is logged too
    await mes.deliver()
    ours = [r for r in caplog.records if not r.name.startswith("mail.")]  # aiosmtpd: the test's SMTP server
    logged = "".join(f"{r.getMessage()} {r.args}" for r in ours)
    secrets = [btg["Authorization"][7:], MED["Authorization"][7:], why, "lea@example.org", "gp@cabinet.example",
               "IRM", "tumeur", "11488-4"]  # fmt: skip
    assert any(r.name.startswith("fhir_server") for r in ours), "the flows log (the emergency access, deliveries)"
    for secret in secrets:
        assert secret not in logged, secret


async def test_professionals_read_neither_the_trail_nor_the_patients_notifications(mes: Space):
    """Leak probes: an authorised professional reaches Léa's record, not her audit trail (other professionals'
    accesses and reasons) nor her notifications — except the emergency copy addressed to them as médecin traitant;
    and no token makes up a notification or rewrites one."""
    btg = ps_token("stranger", codes.BRIS_DE_GLACE, justification="Patiente inconsciente", **LONG)
    assert (await mes.client.get("/DocumentReference/lea-cr", headers=btg)).status_code == 200
    c = mes.client
    (mine,) = await mes.centre(SYSTEM)
    r = await c.get("/Communication?recipient=PractitionerRole/r-gp", headers=SYSTEM)
    (gp_copy,) = [e["resource"] for e in r.json()["entry"]]
    for probe in ("/AuditEvent?patient=lea", "/AuditEvent", "/Patient/lea/AuditEvent", "/AuditEvent?_summary=count",
                  "/Patient?_id=lea&_revinclude=AuditEvent:patient"):  # fmt: skip
        r = await c.get(probe, headers=MED)
        assert r.status_code in (200, 403), probe
        assert "AuditEvent/" not in r.text and "inconsciente" not in r.text and r.json().get("total", 0) == (
            1 if "_revinclude" in probe else 0), probe  # fmt: skip
    assert (await c.get("/Patient/lea/$everything", headers=MED)).text.count('"AuditEvent"') == 0
    assert (await c.get(f"/Communication/{mine['id']}", headers=MED)).status_code == 404
    r = await c.get("/Communication?subject=Patient/lea", headers=MED)
    assert r.status_code == 200 and r.json()["total"] == 0
    gp = ps_token("gp", **LONG)
    assert (await c.get(f"/Communication/{gp_copy['id']}", headers=gp)).status_code == 200
    assert (await c.get(f"/Communication/{mine['id']}", headers=gp)).status_code == 404
    # nobody makes one up, nor rewrites one; its recipient marks it read
    fake = {k: v for k, v in mine.items() if k not in ("id", "meta")}
    for headers in (MED, LEA):
        assert (await c.post("/Communication", json=fake, headers=headers)).status_code == 403
    forged = {**mine, "payload": [{"contentString": "Tout va bien"}]}
    assert (await c.put(f"/Communication/{mine['id']}", json=forged, headers=LEA)).status_code == 403
    assert (await c.post(f"/Communication/{mine['id']}/$mark-read", headers=LEA)).status_code == 200
    assert (await c.post(f"/Communication/{gp_copy['id']}/$mark-read", headers=gp)).status_code == 200


async def test_every_channel_hides_the_trail_and_the_notifications_from_professionals(mes: Space):
    """The leak probes of each channel, as an authorised professional (MED) who must see neither Léa's audit trail
    nor her notifications: vread of an older version, totals, includes, chains, _has, history, batch answers,
    conditional update/delete matching, export, subscriptions, and the wording of the refusals."""
    c = mes.client
    assert (await c.get("/DocumentReference/lea-cr", headers=ps_token("pharma", **LONG))).status_code == 200
    (note,) = await mes.centre(SYSTEM)
    assert (await c.post(f"/Communication/{note['id']}/$mark-read", headers=LEA)).status_code == 200  # version 2
    event_id = note["about"][0]["reference"].split("/")[1]
    probes = {
        f"/Communication/{note['id']}/_history/1": 404,
        f"/Communication/{note['id']}/_history": 404,
        f"/AuditEvent/{event_id}": 404,
        f"/AuditEvent/{event_id}/_history/1": 404,
        "/Communication?_total=accurate": None,
        "/Communication?subject=Patient/lea&_summary=count": None,
        "/Communication?subject:Patient.name:missing=false": None,  # a chain
        "/Patient?_id=lea&_revinclude=Communication:subject&_revinclude=AuditEvent:patient": None,
        f"/Communication?_id={note['id']}&_include=Communication:about": None,
        "/Patient?_has:Communication:subject:category=" + EVENT_SYSTEM + "|professional-access": None,
        "/Patient?_has:AuditEvent:patient:outcome=0": None,
        "/Communication/_history": None,
        "/AuditEvent/_history": None,
        "/_history?_type=Communication,AuditEvent": None,
        "/Patient/lea/$everything": None,
    }
    for url, status in probes.items():
        r = await c.get(url, headers=MED)
        text = r.text
        if status is not None:  # a 404 that says nothing more than the caller asked (its id, "not known")
            assert r.status_code == status, url
            assert "not known" in text and "forbidden" not in text.lower() and "patient" not in text.lower(), url
            continue
        assert note["id"] not in text and event_id not in text, url
        if r.status_code == 200 and "_has" in url:
            assert r.json().get("total", 0) == 0, url  # Léa's existence by her notifications: not disclosed
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Communication/{note['id']}"}},
        {"request": {"method": "GET", "url": f"AuditEvent/{event_id}"}},
        {"request": {"method": "GET", "url": "Communication?subject=Patient/lea"}}]}  # fmt: skip
    r = await c.post("/", json=batch, headers=MED)
    answers = r.json()["entry"]
    assert [e["response"]["status"][:3] for e in answers] == ["404", "404", "200"]
    assert answers[2]["resource"]["total"] == 0 and "resource" not in answers[0] and "resource" not in answers[1]
    # conditional writes never match them (the match would reveal them, or alter them)
    r = await c.delete(f"/Communication?category={EVENT_SYSTEM}|professional-access", headers=MED)
    assert r.status_code in (200, 204, 404, 412)
    assert (await c.get(f"/Communication/{note['id']}", headers=SYSTEM)).status_code == 200  # still there
    forged = {"resourceType": "Communication", "status": "completed", "subject": {"reference": "Patient/lea"}}
    r = await c.put(f"/Communication?category={EVENT_SYSTEM}|professional-access", json=forged, headers=MED)
    assert r.status_code in (201, 403) and note["id"] not in r.text
    assert (await c.get(f"/Communication/{note['id']}", headers=SYSTEM)).json()["payload"] == note["payload"]
    # export: a professional's export of the record holds neither
    found = await exported_ids(c, "/Patient/$export?_type=Communication,AuditEvent", MED)
    assert note["id"] not in found and event_id not in found
    # a professional's Subscription on Communication hears nothing of the notifications written afterwards
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "probe", "criteria": "Communication",
           "channel": {"type": "rest-hook", "endpoint": "https://hooks.example/fhir"}}  # fmt: skip
    assert (await c.post("/Subscription", json=sub, headers=MED)).status_code == 201
    before = len(await mes.centre(SYSTEM))
    assert (await c.get("/DocumentReference/lea-cr", headers=ps_token("inf", **LONG))).status_code == 200
    assert len(await mes.centre(SYSTEM)) == before + 1  # a new notification was written...
    store = mes.app.state.context.store
    assert [i for i in await store.outbox_items() if i.channel == "rest-hook"] == []  # ...and announced to nobody

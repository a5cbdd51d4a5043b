"""Secure messaging (issue 14, docs/messaging.md) on both stores: a full thread — a professional sends with an
attachment and a read receipt, the patient reads (the receipt reaches the sender), replies, the professional
closes the thread and the next reply is refused —; the patient cannot start a thread; the mailbox (trash,
restore, delete for good, drafts, unread counts); filing an attachment into the record; representatives and
the not-for-representatives flag; a blocked professional; the address book.

One server per store for the module (the Mongo stand-in is slow to start a database): tests name what they
create and count only what they made or what must be 0.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import BACKENDS, module_store_url, seeded_client
from test_access_control import StandInVerifier, token
from test_medical_profile import representation
from test_policy import consent, directory, exported_ids, ps_token

from fhir_server.messaging import codes as msg
from fhir_server.policy import codes
from fhir_server.space import representatives as rep

LONG = {"exp": int(time.time()) + 24 * 3600}  # minted at import: valid however long the suite runs
MESSAGING = "patient/*.cruds patient/Communication.cruds"  # the patient's messaging client names Communication
LEA = token(MESSAGING, client_id="mes", sub="lea-sub", fhirUser="Patient/lea", patient="lea", **LONG)
MAX = token(MESSAGING, client_id="mes", sub="max-sub", fhirUser="Patient/max", patient="max", **LONG)
APP = token("patient/*.cruds", client_id="third-app", sub="lea-sub", patient="lea", **LONG)  # a catalogue app
DELEGATE = token("user/*.rs user/Communication.rs", client_id="mes", sub="alice", fhirUser="RelatedPerson/lea-aidant",
                 managed_patients=["lea"], represented=["lea"], **LONG)  # fmt: skip
MED_BTG = ps_token("med", codes.BRIS_DE_GLACE, justification="patiente inconsciente", **LONG)
TUTOR = token("user/*.cruds user/Communication.cruds", client_id="mes", sub="paul", fhirUser="RelatedPerson/lea-tutor",
              managed_patients=["lea"], represented=["lea"], **LONG)  # fmt: skip
MED = ps_token("med", **LONG)  # Léa authorised med; messaging does not need it
GP = ps_token("gp", **LONG)  # same organisation as med (directory(): every role is in Organization/org)
STRANGER = ps_token("stranger", **LONG)  # authorised by Léa, a colleague of med's organisation
# A professional of another organisation, authorised by Léa for her record: still no message of others.
OUTSIDER = token(
    "user/*.cruds", fhirUser="PractitionerRole/r-out",
    ps={"idNatPs": "810000009999", "profession": "10", "practitioner": "Practitioner/out",
        "role": "PractitionerRole/r-out", "organization": "Organization/elsewhere"}, **LONG,
)  # fmt: skip
BLOCKED = ps_token("blocked", **LONG)
SYSTEM = token("system/*.cruds", client_id="feed", sub="feed", **LONG)
PDF = base64.b64encode(b"%PDF-1.7\n% ordonnance\n%%EOF\n").decode()
PNG_AS_PDF = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
EXE = base64.b64encode(b"MZ\x90\x00 this program cannot be run in DOS mode").decode()
INBOX = f"_tag={msg.MAILBOX}|{msg.PATIENT_COPY}"


SEED = [
    *directory(),
    {"resourceType": "Patient", "id": "lea", "identifier": [{"system": codes.INS_NIR, "value": "283051234567881"}]},
    {"resourceType": "Patient", "id": "max", "identifier": [{"system": codes.INS_NIR, "value": "190012345678912"}]},
    consent("permit-med", "lea", "permit", ("PractitionerRole/r-med",)),
    consent("permit-stranger", "lea", "permit", ("PractitionerRole/r-stranger",)),  # authorised for the record
    consent("deny-blocked", "lea", "deny", ("Practitioner/blocked",)),
    representation("lea-tutor", "paul", rep.TUTOR, rep.MANAGE),
    representation("lea-aidant", "alice", rep.DELEGATE, rep.READ),
    {"resourceType": "Organization", "id": "elsewhere", "name": "Clinique"},
    {"resourceType": "Organization", "id": "red-listed", "name": "Cabinet sur liste rouge"},
    {"resourceType": "Practitioner", "id": "out", "identifier": [{"system": codes.ID_NAT_PS, "value": "810000009999"}]},
    {
        "resourceType": "PractitionerRole",
        "id": "r-out",
        "practitioner": {"reference": "Practitioner/out"},
        "organization": {"reference": "Organization/elsewhere"},
        "code": [{"coding": [{"system": codes.TRE_G15, "code": "10"}]}],
    },
    consent("permit-out", "lea", "permit", ("PractitionerRole/r-out",)),
    {
        "resourceType": "PractitionerRole",
        "id": "r-red",
        "practitioner": {"reference": "Practitioner/out"},
        "organization": {"reference": "Organization/red-listed"},
        "code": [{"coding": [{"system": codes.TRE_G15, "code": "10"}]}],
        "telecom": [
            {
                "system": "email",
                "value": "dr.out@clinique.mssante.fr",
                "extension": [{"url": msg.MSS_METADATA, "extension": [{"url": "listeRouge", "valueBoolean": True}]}],
            }
        ],
    },  # a red-listed MSS mailbox
]


@pytest.fixture(scope="module", params=BACKENDS)
async def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator:
    """One seeded server per store for the module, behind the stand-in token verifier."""
    with module_store_url(request, tmp_path_factory) as url:
        async with seeded_client(url, SEED, StandInVerifier()) as c:
            yield c


# --- helpers ---------------------------------------------------------------------------------------------------
def message(text: str, patient: str = "lea", **extra) -> dict:
    return {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": msg.CATEGORY, "code": msg.MESSAGE}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "recipient": [{"reference": f"Patient/{patient}"}],
        "topic": {"text": f"Objet : {text}"},
        "payload": [{"contentString": text}],
        **extra,
    }


def reply(to: dict, text: str, **extra) -> dict:
    return {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": msg.CATEGORY, "code": msg.MESSAGE}]}],
        "subject": to["subject"],
        "inResponseTo": [{"reference": f"Communication/{to['id']}"}],
        "payload": [{"contentString": text}],
        **extra,
    }


async def send_with_binary(c: httpx.AsyncClient, text: str, headers: dict = MED, **extra) -> dict:
    """What professional software sends: the message and its attachment's Binary in one transaction."""
    m, b = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    body = message(text, **extra)
    attachment = {"contentType": "application/pdf", "url": b, "title": "ordonnance.pdf"}
    body["payload"].append({"contentAttachment": attachment})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": b, "resource": {"resourceType": "Binary", "contentType": "application/pdf", "data": PDF,
                                    "securityContext": {"reference": m}},
         "request": {"method": "POST", "url": "Binary"}},
        {"fullUrl": m, "resource": body, "request": {"method": "POST", "url": "Communication"}},
    ]}  # fmt: skip
    r = await c.post("/", json=bundle, headers=headers)
    assert r.status_code == 200, r.text
    location = r.json()["entry"][1]["response"]["location"].split("/_history")[0]
    return (await c.get(f"/{location}", headers=headers)).json()


async def attempt(c: httpx.AsyncClient, body: dict, headers: dict) -> httpx.Response:
    return await c.post("/Communication", json=body, headers=headers)


async def post(c: httpx.AsyncClient, body: dict, headers: dict, status: int = 201) -> dict:
    r = await c.post("/Communication", json=body, headers=headers)
    assert r.status_code == status, r.text
    return r.json()


async def found(c: httpx.AsyncClient, query: str, headers: dict) -> list[dict]:
    r = await c.get(f"/{query}", headers=headers)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", ()) if e.get("search", {}).get("mode") == "match"]


async def copy_of(c: httpx.AsyncClient, sent: dict, headers: dict, mailbox: str = msg.PATIENT_COPY) -> dict:
    """The other mailbox's copy of ``sent`` (the same mes-message-id)."""
    [identifier] = [i["value"] for i in sent["identifier"] if i["system"] == msg.MESSAGE_ID]
    query = f"Communication?identifier={msg.MESSAGE_ID}|{identifier}&_tag={msg.MAILBOX}|{mailbox}"
    [mine] = await found(c, query, headers)
    return mine


def tags(resource: dict, system: str = msg.MAILBOX) -> set[str]:
    return {t["code"] for t in resource.get("meta", {}).get("tag", ()) if t["system"] == system}


async def count(c: httpx.AsyncClient, query: str, headers: dict) -> int:
    r = await c.get(f"/{query}{'&' if '?' in query else '?'}_summary=count", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["total"]


# --- a full thread -------------------------------------------------------------------------------------------------
async def test_a_full_thread(client):
    receipt = [{"url": msg.READ_RECEIPT, "valueBoolean": True}]
    sent = await send_with_binary(client, "Votre ordonnance renouvelée", extension=receipt)
    assert tags(sent) == {msg.PROFESSIONAL_COPY} and tags(sent, msg.MAILBOX_OWNER) == {"Organization/org"}
    assert sent["status"] == "completed" and sent["sent"] and sent["sender"] == {"reference": "PractitionerRole/r-med"}

    # the patient's copy: her own, with her own Binary
    mine = await copy_of(client, sent, LEA)
    assert mine["id"] != sent["id"] and tags(mine) == {msg.PATIENT_COPY} and "received" not in mine
    binary_url = mine["payload"][1]["contentAttachment"]["url"]
    assert binary_url != sent["payload"][1]["contentAttachment"]["url"]
    r = await client.get(f"/{binary_url}", headers=LEA)
    assert r.status_code == 200 and r.json()["data"] == PDF
    # she cannot read the sender's copy nor its Binary; he cannot read hers
    assert (await client.get(f"/Communication/{sent['id']}", headers=LEA)).status_code == 404
    assert (await client.get(f"/{sent['payload'][1]['contentAttachment']['url']}", headers=LEA)).status_code == 404
    assert (await client.get(f"/Communication/{mine['id']}", headers=MED)).status_code == 404
    assert (await client.get(f"/{binary_url}", headers=MED)).status_code == 404

    # unread, then read: the receipt reaches the sender's copy
    assert mine["id"] in {m["id"] for m in await found(client, f"Communication?{INBOX}&received:missing=true", LEA)}
    r = await client.post(f"/Communication/{mine['id']}/$mark-read", headers=LEA)
    assert r.status_code == 200 and r.json()["received"], r.text
    assert (await client.get(f"/Communication/{sent['id']}", headers=MED)).json()["received"] == r.json()["received"]

    # she replies inside the thread: recipient and thread filled in, the professional's copy points at his messages
    answer = await post(client, reply(mine, "Merci docteur"), LEA)
    assert answer["recipient"] == [{"reference": "PractitionerRole/r-med"}]
    assert answer["partOf"] == [{"reference": f"Communication/{mine['id']}"}]
    address = {"system": msg.ADDRESS_SYSTEM, "value": "283051234567881@patient.mssante.fr"}  # from her INS
    assert answer["sender"] == {"reference": "Patient/lea", "identifier": address}
    assert sent["recipient"] == [{"reference": "Patient/lea", "identifier": address}]
    theirs = await copy_of(client, answer, MED, msg.PROFESSIONAL_COPY)
    assert theirs["inResponseTo"] == [{"reference": f"Communication/{sent['id']}"}]
    assert theirs["partOf"] == [{"reference": f"Communication/{sent['id']}"}]
    # the professional's colleagues of the same organisation see the thread; the thread is searchable
    thread = await found(client, f"Communication?part-of=Communication/{sent['id']}", GP)
    assert theirs["id"] in {m["id"] for m in thread}

    # he closes the thread: her copy says so, and her next reply is refused
    r = await client.post(f"/Communication/{sent['id']}/$close-thread", headers=MED)
    assert r.status_code == 200, r.text
    mine = (await client.get(f"/Communication/{mine['id']}", headers=LEA)).json()
    assert any(e["url"] == msg.REPLIES_CLOSED for e in mine.get("extension", ()))
    r = await attempt(client, reply(mine, "Encore une question"), LEA)
    assert r.status_code == 403 and "closed this thread" in r.text, r.text


async def test_the_patient_cannot_start_a_thread_nor_write_as_someone_else(client):
    r = await attempt(
        client, message("Bonjour docteur") | {"recipient": [{"reference": "PractitionerRole/r-med"}]}, LEA
    )
    assert r.status_code == 403 and "cannot start a conversation" in r.text, r.text
    sent = await post(client, message("Résultats disponibles"), MED)
    mine = await copy_of(client, sent, LEA)
    # replying to another mailbox's copy, as someone else, or to someone else: refused
    r = await attempt(client, reply(sent, "?"), LEA)
    assert r.status_code == 422, r.text
    r = await attempt(client, reply(mine, "?", sender={"reference": "Patient/max"}), LEA)
    assert r.status_code == 403, r.text
    r = await attempt(client, reply(mine, "?", recipient=[{"reference": "PractitionerRole/r-kine"}]), LEA)
    assert r.status_code == 422, r.text
    # a professional writes as themselves only, to the patient the message is about
    r = await attempt(client, message("x") | {"sender": {"reference": "PractitionerRole/r-gp"}}, MED)
    assert r.status_code == 403, r.text
    r = await attempt(client, message("x") | {"recipient": [{"reference": "Patient/max"}]}, MED)
    assert r.status_code == 422, r.text
    # a sent message does not change
    changed = {**mine, "payload": [{"contentString": "autre chose"}]}
    assert (await client.put(f"/Communication/{mine['id']}", json=changed, headers=LEA)).status_code == 422
    changed = {**sent, "payload": [{"contentString": "autre chose"}]}
    assert (await client.put(f"/Communication/{sent['id']}", json=changed, headers=MED)).status_code == 422


async def test_attachments_are_sniffed_and_limited(client):
    before = await count(client, "Communication?sender=PractitionerRole/r-med", MED)
    inline = {"contentAttachment": {"contentType": "application/pdf", "data": PNG_AS_PDF}}
    r = await attempt(client, message("x") | {"payload": [{"contentString": "x"}, inline]}, MED)
    assert r.status_code == 422 and "image/png" in r.text, r.text
    inline = {"contentAttachment": {"contentType": "application/octet-stream", "data": EXE}}
    r = await attempt(client, message("x") | {"payload": [{"contentString": "x"}, inline]}, MED)
    assert r.status_code == 422 and "PDF, a JPEG or a PNG" in r.text, r.text
    many = [{"contentAttachment": {"contentType": "application/pdf", "data": PDF}}] * 11
    r = await attempt(client, message("x") | {"payload": [{"contentString": "x"}, *many]}, MED)
    assert r.status_code == 422 and "at most 10 attachments" in r.text, r.text
    # nothing of a refused message was stored, in either mailbox
    assert await count(client, "Communication?sender=PractitionerRole/r-med", MED) == before


async def test_the_mailbox_trash_restore_delete_and_drafts(client):
    sent = await send_with_binary(client, "Convocation avant hospitalisation")
    mine = await copy_of(client, sent, LEA)
    r = await client.post(f"/Communication/{mine['id']}/$trash", headers=LEA)
    assert r.status_code == 200 and msg.TRASH in tags(r.json()), r.text
    assert mine["id"] in {m["id"] for m in await found(client, f"Communication?_tag={msg.MAILBOX}|{msg.TRASH}", LEA)}
    inbox = await found(client, f"Communication?{INBOX}&_tag:not={msg.MAILBOX}|{msg.TRASH}", LEA)
    assert mine["id"] not in {m["id"] for m in inbox}
    assert msg.TRASH not in tags((await client.get(f"/Communication/{sent['id']}", headers=MED)).json())  # his is his
    r = await client.post(f"/Communication/{mine['id']}/$restore", headers=LEA)
    assert r.status_code == 200 and msg.TRASH not in tags(r.json()), r.text
    assert (await client.post(f"/Communication/{sent['id']}/$trash", headers=MED)).status_code == 403

    # a draft reply: hers only until sent, then delivered
    draft = await post(client, reply(mine, "Brouillon", status="preparation"), LEA)
    assert "sent" not in draft
    theirs = f"Communication?identifier={msg.MESSAGE_ID}|{draft['identifier'][0]['value']}"
    assert await count(client, theirs, MED) == 0
    edited = {**draft, "payload": [{"contentString": "Je serai présente"}]}
    r = await client.put(f"/Communication/{draft['id']}", json=edited, headers=LEA)
    assert r.status_code == 200, r.text
    r = await client.put(f"/Communication/{draft['id']}", json={**r.json(), "status": "completed"}, headers=LEA)
    assert r.status_code == 200 and r.json()["sent"], r.text
    [delivered] = await found(client, theirs, MED)
    assert delivered["payload"] == [{"contentString": "Je serai présente"}]

    # deleted for good: gone from her mailbox with its attachment; the sender keeps his copy and his Binary
    binary_url = mine["payload"][1]["contentAttachment"]["url"]
    assert (await client.delete(f"/Communication/{mine['id']}", headers=LEA)).status_code == 204
    assert (await client.get(f"/Communication/{mine['id']}", headers=LEA)).status_code == 410
    assert (await client.get(f"/{binary_url}", headers=LEA)).status_code in (404, 410)
    assert (await client.get(f"/Communication/{sent['id']}", headers=MED)).status_code == 200
    assert (await client.get(f"/{sent['payload'][1]['contentAttachment']['url']}", headers=MED)).status_code == 200


async def test_filing_an_attachment_into_the_record(client):
    sent = await send_with_binary(client, "Compte rendu de consultation")
    mine = await copy_of(client, sent, LEA)
    kind = {"system": "http://loinc.org", "code": "11488-4"}  # Consult note, a DMP type
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "attachment", "valueInteger": 0},
                                                             {"name": "type", "valueCoding": kind}]}  # fmt: skip
    r = await client.post(f"/Communication/{mine['id']}/$file-attachment", json=parameters, headers=LEA)
    assert r.status_code == 201, r.text
    document = r.json()
    assert document["author"] == [{"reference": "PractitionerRole/r-med"}]
    assert document["subject"] == {"reference": "Patient/lea"}
    [filed] = [e for e in document["extension"] if e["url"] == msg.FILED_FROM]
    assert {"url": "filedBy", "valueReference": {"reference": "Patient/lea"}} in filed["extension"]
    binary = (await client.get(f"/{document['content'][0]['attachment']['url']}", headers=LEA)).json()
    assert binary["data"] == PDF and binary["securityContext"] == {"reference": f"DocumentReference/{document['id']}"}
    # a document of her record now: the authorised professional reads it (under the matrix), she may delete it
    assert (await client.get(f"/DocumentReference/{document['id']}", headers=MED)).status_code == 200
    r = await client.post(f"/Communication/{sent['id']}/$file-attachment", json=parameters, headers=MED)
    assert r.status_code == 403, r.text
    assert (await client.delete(f"/DocumentReference/{document['id']}", headers=LEA)).status_code == 204


# --- who sees what -------------------------------------------------------------------------------------------------
async def test_other_professionals_apps_and_backends_never_reach_messages(client):
    sent = await send_with_binary(client, "Message confidentiel")
    mine = await copy_of(client, sent, LEA)
    ids = {sent["id"], mine["id"]}
    for who in (OUTSIDER, BLOCKED, APP, SYSTEM, MAX):
        label = who["Authorization"][-12:]
        assert await count(client, "Communication?subject=Patient/lea", who) == 0 or who is SYSTEM, label
        for id_ in ids:
            assert (await client.get(f"/Communication/{id_}", headers=who)).status_code == 404, label
        listed = await found(client, "Patient?_id=lea&_revinclude=Communication:subject", who) if who is not MAX else []
        assert not ids & {r["id"] for r in listed}, label
    # a backend's search of every Communication: no message of anyone
    assert not ids & {r["id"] for r in await found(client, "Communication?_count=1000", SYSTEM)}
    # med's colleague of the same organisation sees the organisation's copy, not the patient's
    assert (await client.get(f"/Communication/{sent['id']}", headers=STRANGER)).status_code == 200
    assert (await client.get(f"/Communication/{mine['id']}", headers=STRANGER)).status_code == 404
    r = await client.get("/Patient/lea/$everything", headers=OUTSIDER)
    assert r.status_code in (200, 404)
    if r.status_code == 200:
        assert not ids & {e["resource"]["id"] for e in r.json().get("entry", ())}
    # the patient's $everything has her copy, not his
    r = await client.get("/Patient/lea/$everything", headers=LEA)
    everything = {e["resource"]["id"] for e in r.json()["entry"]}
    assert mine["id"] in everything and sent["id"] not in everything
    # a backend writes no message
    r = await attempt(client, message("x") | {"sender": {"reference": "Organization/org"}}, SYSTEM)
    assert r.status_code == 403, r.text


async def test_a_blocked_professional_cannot_write_and_a_stranger_may(client):
    r = await attempt(client, message("x"), BLOCKED)
    assert r.status_code in (403, 404), r.text
    sent = await post(client, message("Prise de rendez-vous"), STRANGER)  # messaging needs no authorisation
    assert tags(sent, msg.MAILBOX_OWNER) == {"Organization/org"}


async def test_representatives_and_the_not_for_representatives_flag(client):
    shared = await post(client, message("Pour Léa et son tuteur"), MED)
    private = await post(client, message("Pour Léa seule", meta={"security": [
        {"system": codes.TRE_A07, "code": codes.INVISIBLE_REPRESENTANTS_LEGAUX}]}), MED)  # fmt: skip
    shared_copy, private_copy = await copy_of(client, shared, LEA), await copy_of(client, private, LEA)
    assert (await client.get(f"/Communication/{shared_copy['id']}", headers=TUTOR)).status_code == 200
    assert (await client.get(f"/Communication/{private_copy['id']}", headers=TUTOR)).status_code == 404
    seen = {m["id"] for m in await found(client, f"Communication?subject=Patient/lea&{INBOX}", TUTOR)}
    assert shared_copy["id"] in seen and private_copy["id"] not in seen
    answer = await post(client, reply(shared_copy, "Réponse du tuteur"), TUTOR)
    assert answer["sender"] == {"reference": "RelatedPerson/lea-tutor"}
    r = await attempt(client, reply(private_copy, "?"), TUTOR)
    assert r.status_code == 422, r.text


async def test_the_address_book_lists_who_wrote_to_the_patient(client):
    await post(client, message("Bonjour"), GP)
    red = token("user/*.cruds", fhirUser="PractitionerRole/r-red", **LONG,
                ps={"idNatPs": "810000009999", "profession": "10", "practitioner": "Practitioner/out",
                    "role": "PractitionerRole/r-red", "organization": "Organization/red-listed"})  # fmt: skip
    await post(client, message("Sur liste rouge"), red)
    r = await client.get("/Patient/lea/$contacts", headers=LEA)
    assert r.status_code == 200, r.text
    listed = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json()["entry"]}
    assert "PractitionerRole/r-gp" in listed and "PractitionerRole/r-red" not in listed
    assert (await client.get("/Patient/lea/$contacts", headers=MAX)).status_code == 404


async def test_an_appointment_proposal_travels_in_a_message(client):
    participants = [{"actor": {"reference": "Patient/lea"}, "status": "needs-action"},
                    {"actor": {"reference": "PractitionerRole/r-med"}, "status": "accepted"}]  # fmt: skip
    appointment = {"resourceType": "Appointment", "status": "proposed", "start": "2027-01-10T09:00:00+01:00",
                   "end": "2027-01-10T09:30:00+01:00", "description": "Consultation de suivi",
                   "participant": participants}  # fmt: skip
    r = await client.post("/Appointment", json=appointment, headers=MED)
    assert r.status_code == 201, r.text
    proposal = r.json()
    body = message("Proposition de rendez-vous")
    body["payload"].append({"contentReference": {"reference": f"Appointment/{proposal['id']}"}})
    sent = await post(client, body, MED)
    mine = await copy_of(client, sent, LEA)
    assert mine["payload"][1]["contentReference"] == {"reference": f"Appointment/{proposal['id']}"}
    accepted = {
        **proposal,
        "status": "booked",
        "participant": [{**proposal["participant"][0], "status": "accepted"}, proposal["participant"][1]],
    }
    r = await client.put(f"/Appointment/{proposal['id']}", json=accepted, headers=LEA)
    assert r.status_code == 200 and r.json()["status"] == "booked", r.text


async def test_export_include_has_and_emergency_probes(client, tmp_path):
    client._transport.app.state.exports.directory = tmp_path  # type: ignore[attr-defined]
    sent = await send_with_binary(client, "Message pour l'export")
    mine = await copy_of(client, sent, LEA)
    binaries = {sent["payload"][1]["contentAttachment"]["url"][7:], mine["payload"][1]["contentAttachment"]["url"][7:]}
    # $export: the patient gets her copy and its Binary; a backend and an authorised outsider get no message
    assert {mine["id"]} <= await exported_ids(client, "/Patient/$export?_type=Communication", LEA)
    exported = await exported_ids(client, "/$export?_type=Communication,Binary", SYSTEM)
    assert not exported & ({sent["id"], mine["id"]} | binaries)
    assert not await exported_ids(client, "/Patient/$export?_type=Communication", OUTSIDER) & {sent["id"], mine["id"]}
    assert not await exported_ids(client, "/$export?_type=Communication", OUTSIDER) & {sent["id"], mine["id"]}
    # _include / _has / chains from what an outsider may see lead to no message
    r = await client.get("/Patient?_id=lea&_revinclude=Communication:subject&_revinclude=Communication:recipient",
                         headers=OUTSIDER)  # fmt: skip
    assert not {e["resource"]["id"] for e in r.json().get("entry", ())} & {sent["id"], mine["id"]}
    has = f"Patient?_id=lea&_has:Communication:subject:_tag={msg.MAILBOX}|{msg.PATIENT_COPY}&_summary=count"
    assert (await client.get(f"/{has}", headers=OUTSIDER)).json()["total"] == 0
    assert (await client.get(f"/{has}", headers=LEA)).json()["total"] == 1
    r = await client.get("/Binary?securitycontext:Communication.subject=Patient/lea&_summary=count", headers=OUTSIDER)
    assert r.status_code in (200, 403) and (r.status_code == 403 or r.json()["total"] == 0), r.text
    # the patient's copy includes its thread; the colleague's includes only the organisation's copies
    answer = await post(client, reply(mine, "Bien reçu"), LEA)
    r = await client.get(f"/Communication?_id={answer['id']}&_include=Communication:part-of", headers=LEA)
    assert {e["resource"]["id"] for e in r.json()["entry"]} == {answer["id"], mine["id"]}
    # an emergency access reaches no message
    assert await count(client, "Communication?subject=Patient/lea", MED_BTG) == 0
    assert (await client.get(f"/Communication/{sent['id']}", headers=MED_BTG)).status_code == 404
    assert (await attempt(client, message("urgence"), MED_BTG)).status_code == 403


async def test_a_delegate_reads_but_does_not_reply_and_professionals_manage_their_copies(client):
    sent = await post(
        client, message("Rappel vaccin", extension=[{"url": msg.READ_RECEIPT, "valueBoolean": True}]), MED
    )
    mine = await copy_of(client, sent, LEA)
    assert (await client.get(f"/Communication/{mine['id']}", headers=DELEGATE)).status_code == 200
    assert (await attempt(client, reply(mine, "?"), DELEGATE)).status_code == 403
    r = await client.post(f"/Communication/{mine['id']}/$mark-read", headers=DELEGATE)
    assert r.status_code == 403, r.text  # a read-only right marks nothing (and sends no receipt)
    assert "received" not in (await client.get(f"/Communication/{sent['id']}", headers=MED)).json()
    # the professional marks the reply to their organisation read on their copy only
    answer = await post(client, reply(mine, "Merci", recipient=[{"reference": "Organization/org"}]), LEA)
    theirs = await copy_of(client, answer, GP, msg.PROFESSIONAL_COPY)
    r = await client.post(f"/Communication/{theirs['id']}/$mark-read", headers=GP)
    assert r.status_code == 200 and r.json()["received"], r.text
    assert "received" not in (await client.get(f"/Communication/{answer['id']}", headers=LEA)).json()
    # and deletes their copy: the patient's stays
    assert (await client.delete(f"/Communication/{theirs['id']}", headers=MED)).status_code == 204
    assert (await client.get(f"/Communication/{answer['id']}", headers=LEA)).status_code == 200


async def test_an_attachment_over_the_size_limit_answers_413(client, monkeypatch: pytest.MonkeyPatch):
    from fhir_server.messaging import messages

    monkeypatch.setenv("FHIR_SERVER_MESSAGE_ATTACHMENT_MAX_BYTES", "16")
    messages.limits.cache_clear()
    try:
        inline = {"contentAttachment": {"contentType": "application/pdf", "data": PDF}}  # 26 bytes
        r = await attempt(client, message("x") | {"payload": [{"contentString": "x"}, inline]}, MED)
        assert r.status_code == 413 and "at most 16 bytes" in r.text, r.text
    finally:
        monkeypatch.delenv("FHIR_SERVER_MESSAGE_ATTACHMENT_MAX_BYTES")
        messages.limits.cache_clear()


async def test_no_other_channel_shows_a_message_to_an_outsider(client):
    """vread of an older version, history, _include, batch answers, conditional update and delete matching,
    a Subscription's notification, and the wording of the 404: an authorised professional of another
    organisation learns nothing more of a message than of one that never existed."""
    app = client._transport.app  # type: ignore[attr-defined]
    subscription = {"resourceType": "Subscription", "status": "requested", "reason": "suivi",
                    "criteria": "Communication?subject=Patient/lea",
                    "channel": {"type": "rest-hook", "endpoint": "https://ehr.example/hook"}}  # fmt: skip
    assert (await client.post("/Subscription", json=subscription, headers=OUTSIDER)).status_code == 201
    r = await client.post("/Subscription", json=subscription, headers=MED)  # the control: the sender's own
    assert r.status_code == 201, r.text
    control = r.json()["id"]
    sent = await send_with_binary(client, "Pour Léa seulement")
    mine = await copy_of(client, sent, LEA)
    assert (await client.post(f"/Communication/{mine['id']}/$mark-read", headers=LEA)).status_code == 200  # v2
    ids = (sent["id"], mine["id"])
    for id_ in ids:
        for path in (f"Communication/{id_}/_history/1", f"Communication/{id_}/_history"):
            assert (await client.get(f"/{path}", headers=OUTSIDER)).status_code == 404, path
    history = await client.get("/Communication/_history", headers=OUTSIDER)
    assert not set(ids) & {e["resource"]["id"] for e in history.json().get("entry", ()) if "resource" in e}
    r = await client.get("/Communication?_include=Communication:part-of&_revinclude=Communication:part-of",
                         headers=OUTSIDER)  # fmt: skip
    assert not set(ids) & {e["resource"]["id"] for e in r.json().get("entry", ())}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Communication/{mine['id']}"}},
        {"request": {"method": "GET", "url": "Communication?subject=Patient/lea&_total=accurate"}}]}  # fmt: skip
    answers = (await client.post("/", json=batch, headers=OUTSIDER)).json()["entry"]
    assert answers[0]["response"]["status"].startswith("404") and answers[1]["resource"]["total"] == 0
    # conditional update and delete by the shared identifier match neither copy
    query = f"Communication?identifier={msg.MESSAGE_ID}|{sent['identifier'][0]['value']}"
    assert (await client.delete(f"/{query}", headers=OUTSIDER)).status_code in (200, 204)
    r = await client.put(f"/{query}", json=message("remplacé"), headers=OUTSIDER)
    assert r.status_code in (201, 403, 422), r.text  # a new message of theirs at most, never a change of these
    assert (await client.get(f"/Communication/{mine['id']}", headers=LEA)).json()["meta"]["versionId"] == "2"
    assert (await client.get(f"/Communication/{sent['id']}", headers=MED)).status_code == 200
    # Subscriptions match under their subscriber's access: the sender's is notified of his copy only, the
    # outsider's of nothing
    copies = {f"Communication/{i}" for i in ids}
    queued = [i for i in await app.state.context.store.outbox_items() if i.payload.get("resource") in copies]
    assert [(i.payload["subscription"], i.payload["resource"]) for i in queued] == [
        (control, f"Communication/{sent['id']}")
    ]
    # the 404 says what it says of a message that never existed
    theirs = (await client.get(f"/Communication/{mine['id']}", headers=OUTSIDER)).json()
    never = (await client.get("/Communication/never-was", headers=OUTSIDER)).json()
    assert json.dumps(theirs).replace(mine["id"], "X") == json.dumps(never).replace("never-was", "X")

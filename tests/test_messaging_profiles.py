"""The messaging's definitions in profiles/: the extensions match what ``messaging/mailbox.py`` writes (run with
stand-ins for the store), the code systems hold exactly the codes of ``messaging/codes.py`` and ``mailbox.py``, and a
message as the server stores it (the body of tests/test_messaging.py's ``message()`` plus what ``messages.prepare``
adds) conforms to ``mes-message``. Instances are checked by the profile engine itself."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from types import SimpleNamespace

import orjson
import pytest
from conftest import REPO_ROOT
from test_messaging import message

from fhir_server.interactions import Context
from fhir_server.messaging import codes, mailbox
from fhir_server.store import ResourceVersion
from fhir_server.validation import profiles

BASE = "https://github.com/fhir-server/fhir-server"
OWNER = f"{BASE}/CodeSystem/mes-mailbox-owner"


def check(extension: dict, url: str) -> list:
    registry = profiles.registry()
    return registry.check({"resourceType": "Extension", **extension}, registry.extensions[url])


def check_message(body: dict) -> list:
    registry = profiles.registry()
    profile = registry.get(codes.PROFILE)
    assert profile is not None
    return registry.check(body, profile)


def stored(copy_of: str = codes.PROFESSIONAL_COPY) -> dict:
    """A professional's message as stored: ``message()`` with the identifier, sender, ``sent`` and mailbox tags
    ``messages.prepare`` writes (the professional's copy, or the patient's copy delivery makes of it)."""
    body = message("Vos résultats sont arrivés", id="m1")
    tags = (
        [
            {"system": codes.MAILBOX, "code": codes.PROFESSIONAL_COPY},
            {"system": codes.MAILBOX_OWNER, "code": "Organization/org"},
        ]
        if copy_of == codes.PROFESSIONAL_COPY
        else [{"system": codes.MAILBOX, "code": codes.PATIENT_COPY}]
    )
    return {
        **body,
        "meta": {"versionId": "1", "tag": tags},
        "identifier": [{"system": codes.MESSAGE_ID, "value": "0f9a0c7e"}],
        "sender": {"reference": "PractitionerRole/r-med"},
        "sent": "2026-03-02T09:15:00.000000Z",
    }


# --- running mailbox.py with stand-ins for the store ---------------------------------------------------------------


@dataclass
class Principal:
    fhir_user: str | None = "Patient/lea"
    fhir_user_type: str | None = "Patient"


class Access:
    patient_side = object()
    principal = Principal()

    def require(self, type_: str, interaction: str) -> None:
        pass


def version(type_: str, body: dict) -> ResourceVersion:
    return ResourceVersion(type_, body.get("id", "x"), 1, 0, "POST", orjson.dumps(body))


@pytest.fixture
def written(monkeypatch) -> tuple[Context, dict, dict]:
    """A Context for mailbox.py, the stored resources it reads (type/id → body) and what it writes."""
    resources: dict[str, dict] = {}
    out: dict[str, dict] = {}

    async def read(ctx, type_, id_):
        return version(type_, resources[f"{type_}/{id_}"])

    async def update(ctx, type_, id_, body, if_match=None):
        out[f"{type_}/{id_}"] = body
        return SimpleNamespace(version=version(type_, body))

    async def create_in(tx, type_, body, id_=None):
        out[f"{type_}/{id_}"] = body
        return SimpleNamespace(version=version(type_, {**body, "id": id_}))

    async def transact(ctx, work):
        return await work(None)

    monkeypatch.setattr(mailbox.crud, "read", read)
    monkeypatch.setattr(mailbox.crud, "update", update)
    monkeypatch.setattr(mailbox.crud, "create_in", create_in)
    monkeypatch.setattr(mailbox.crud, "_transact", transact)
    ctx = Context(store=None, settings=None, access=Access())  # type: ignore[arg-type]
    return ctx, resources, out


async def test_replies_closed_as_close_thread_writes_it_conforms(written):
    ctx, resources, out = written
    resources["Communication/m1"] = stored()
    await mailbox.close_thread(ctx, "m1")
    body = out["Communication/m1"]
    [closed] = [e for e in body["extension"] if e["url"] == codes.REPLIES_CLOSED]
    assert check(closed, codes.REPLIES_CLOSED) == []
    assert check_message(body) == []
    for wrong in ({"url": codes.REPLIES_CLOSED}, {**closed, "extension": [{"url": "by", "valueString": "x"}]}):
        assert check(wrong, codes.REPLIES_CLOSED), wrong
    [issue] = check({**closed, "url": codes.READ_RECEIPT}, codes.REPLIES_CLOSED)
    assert issue.code == "value" and "must be exactly" in issue.diagnostics


def test_read_receipt_conforms_and_refuses_what_the_code_never_reads():
    asked = {"url": codes.READ_RECEIPT, "valueBoolean": True}
    assert check(asked, codes.READ_RECEIPT) == []
    assert check({**asked, "valueBoolean": False}, codes.READ_RECEIPT) == []
    [issue] = check({"url": codes.READ_RECEIPT}, codes.READ_RECEIPT)
    assert issue.code == "required"
    [issue] = check({**asked, "extension": [{"url": "to", "valueString": "x"}]}, codes.READ_RECEIPT)
    assert issue.code == "structure"
    assert check_message({**stored(), "extension": [asked]}) == []


async def test_filed_from_message_as_file_attachment_writes_it_conforms(written):
    ctx, resources, out = written
    pdf = "JVBERi0xLjcKJSBvcmRvbm5hbmNlCiUlRU9GCg=="
    attachment = {"contentType": "application/pdf", "data": pdf, "title": "ordonnance.pdf"}
    patient_copy = stored(codes.PATIENT_COPY)
    patient_copy["payload"].append({"contentAttachment": attachment})
    resources["Communication/m1"] = patient_copy
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "attachment", "valueInteger": 0},
        {"name": "type", "valueCoding": {"system": "http://loinc.org", "code": "11488-4"}}]}  # fmt: skip
    await mailbox.file_attachment(ctx, "m1", parameters)
    [document] = [r for r in out.values() if r["resourceType"] == "DocumentReference"]
    assert document["meta"]["tag"] == [{"system": codes.MAILBOX, "code": mailbox.FILED}]
    [filed] = [e for e in document["extension"] if e["url"] == codes.FILED_FROM]
    assert check(filed, codes.FILED_FROM) == []
    by_representative = copy.deepcopy(filed)
    by_representative["extension"][0]["valueReference"] = {"reference": "RelatedPerson/lea-tutor"}
    assert check(by_representative, codes.FILED_FROM) == []

    by_professional = copy.deepcopy(filed)
    by_professional["extension"][0]["valueReference"] = {"reference": "PractitionerRole/r-med"}
    [issue] = check(by_professional, codes.FILED_FROM)
    assert issue.code == "value" and "refers to a PractitionerRole" in issue.diagnostics
    from_document = copy.deepcopy(filed)
    from_document["extension"][1]["valueReference"] = {"reference": "DocumentReference/d1"}
    [issue] = check(from_document, codes.FILED_FROM)
    assert issue.code == "value" and "refers to a DocumentReference" in issue.diagnostics
    no_message = copy.deepcopy(filed)
    no_message["extension"] = no_message["extension"][:1]
    assert [i.code for i in check(no_message, codes.FILED_FROM)] == ["required", "required"]  # 2 subs, the slice
    unknown = copy.deepcopy(filed)
    unknown["extension"].append({"url": "folder", "valueString": "ordonnances"})
    [issue] = check(unknown, codes.FILED_FROM)
    assert "slicing is closed" in issue.diagnostics


async def test_trash_and_restore_keep_a_conforming_message(written):
    ctx, resources, out = written
    resources["Communication/m1"] = stored(codes.PATIENT_COPY)
    await mailbox.trash(ctx, "m1", into=True)
    trashed = out["Communication/m1"]
    assert {"system": codes.MAILBOX, "code": codes.TRASH} in trashed["meta"]["tag"]
    assert check_message(trashed) == []
    resources["Communication/m1"] = trashed
    await mailbox.trash(ctx, "m1", into=False)
    assert check_message(out["Communication/m1"]) == []


# --- the code systems ------------------------------------------------------------------------------------------


def test_the_code_systems_hold_the_codes_of_the_code_and_nothing_else():
    registry = profiles.registry()
    category = registry.code_systems[codes.CATEGORY]
    assert [c["code"] for c in category["concept"]] == [codes.MESSAGE]
    mailboxes = registry.code_systems[codes.MAILBOX]
    used = {codes.PATIENT_COPY, codes.PROFESSIONAL_COPY, codes.TRASH, mailbox.FILED}
    assert {c["code"] for c in mailboxes["concept"]} == used and len(mailboxes["concept"]) == len(used)
    owner = registry.code_systems[codes.MAILBOX_OWNER]
    assert owner["content"] == "not-present" and "concept" not in owner
    assert codes.MAILBOX_OWNER == OWNER
    pairs, _ = registry.expansion(f"{BASE}/ValueSet/mes-message-status")
    assert {code for _, code in pairs} == {"completed", "preparation"}


def test_the_message_id_naming_system_is_described_beside_the_profiles():
    """NamingSystems are not the profile engine's (it loads profiles/*.json only): kept in a sub-folder."""
    naming = json.loads((REPO_ROOT / "profiles" / "naming-systems" / "NamingSystem-mes-message-id.json").read_text())
    assert naming["kind"] == "identifier" and naming["uniqueId"][0] == {
        "type": "uri", "value": codes.MESSAGE_ID, "preferred": True}  # fmt: skip
    assert not list((REPO_ROOT / "profiles").glob("NamingSystem-*.json"))


# --- the message ------------------------------------------------------------------------------------------------


def test_a_stored_message_conforms_to_mes_message():
    assert check_message(stored()) == []
    assert check_message(stored(codes.PATIENT_COPY)) == []
    draft = {
        **stored(codes.PATIENT_COPY),
        "status": "preparation",
        "sender": {"reference": "Patient/lea"},
        "recipient": [{"reference": "PractitionerRole/r-med"}],
        "inResponseTo": [{"reference": "Communication/m0"}],
        "partOf": [{"reference": "Communication/m0"}],
    }
    del draft["sent"], draft["topic"]
    assert check_message(draft) == []
    with_documents = stored()
    with_documents["payload"] += [{"contentReference": {"reference": "DocumentReference/d1"}},
                                  {"contentReference": {"reference": "Appointment/a1"}}]  # fmt: skip
    assert check_message(with_documents) == []


def test_what_the_write_rules_refuse_the_profile_refuses():
    def issues(**changes) -> list[tuple[str, str]]:
        body = {**stored(), **changes}
        return [(i.code, i.expression[0]) for i in check_message({k: v for k, v in body.items() if v is not None})]

    assert issues(status="in-progress") == [("code-invalid", "Communication.status")]
    assert issues(payload=None) == [("required", "Communication.payload")]
    assert issues(subject={"reference": "Group/g"}) == [("value", "Communication.subject")]
    assert issues(recipient=[{"reference": "Patient/lea"}, {"reference": "Patient/max"}]) == [
        ("structure", "Communication.recipient")
    ]
    assert issues(inResponseTo=[{"reference": "Communication/a"}, {"reference": "Communication/b"}]) == [
        ("structure", "Communication.inResponseTo")
    ]
    assert issues(payload=[{"contentReference": {"reference": "Observation/o"}}]) == [
        ("value", "Communication.payload[0].contentReference")
    ]
    assert issues(category=[{"coding": [{"system": codes.CATEGORY, "code": "notification"}]}]) == [
        ("required", "Communication.category")
    ]
    assert issues(identifier=[{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:x"}]) == [
        ("required", "Communication.identifier")
    ]
    assert issues(sender=None) == [("required", "Communication.sender")]

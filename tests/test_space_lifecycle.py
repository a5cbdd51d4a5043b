"""The space lifecycle of issue 12, end to end on both stores, through the real authorization server: the
registry feed (API and command line), the enrolment code by email (aiosmtpd) or letter, opposition with its
PDF proof, closure by a late opposition, automatic creation after the opposition period (the clock moved,
no sleeping), activation then sign-in, a new code, the same refusal whatever was wrong, the throttle
against guessing, and the AuditEvent of every transition (never the code nor the card number).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from aiosmtpd.controller import Controller
from pypdf import PdfReader
from test_auth_server import BASE, answers, running, tokens_for
from test_delivery import Inbox, smtp_server

from fhir_server.auth import totp
from fhir_server.cli import main as cli
from fhir_server.policy.codes import INS_NIR
from fhir_server.search.parameters import parse
from fhir_server.space import status
from fhir_server.space.clock import CLOCK
from fhir_server.space.enrolment import ALPHABET, IP_LIMIT, NIR_LIMIT, new_code, nir_key
from fhir_server.space.lifecycle import LETTER, valid_nir
from fhir_server.space.registry import VITALE_SERIAL
from fhir_server.store import open_store

CODE = re.compile(r"\b[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}\b")
DAY = 24 * 3600


def nir(first13: str) -> str:
    """A NIR with its right key."""
    return f"{first13}{97 - int(first13) % 97:02d}"


LEA, MARC, NOE, NOBODY = nir("2900475123456"), nir("1850699123456"), nir("1150475123457"), nir("1770175000001")
SERIAL = {LEA: "8012345678", MARC: "8098765432", NOE: "8011111111"}
BIRTH = {LEA: "1990-04-12", MARC: "1985-06-30", NOE: "2015-04-01"}


def registry_patient(number: str, *, email: str | None = None, family: str = "Martin", given: str = "Léa",
                     opener: str | None = None) -> dict:  # fmt: skip
    patient: dict = {
        "resourceType": "Patient",
        "identifier": [{"system": INS_NIR, "value": number}, {"system": VITALE_SERIAL, "value": SERIAL[number]}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "birthDate": BIRTH[number],
        "gender": "female",
    }
    if email:
        patient["telecom"] = [{"system": "email", "value": email}]
    if opener:
        patient["extension"] = [{"url": status.OUVRANT_DROIT, "valueIdentifier": {"system": INS_NIR, "value": opener}}]
    return patient


def ndjson(*patients: dict) -> bytes:
    return b"".join(orjson.dumps(p) + b"\n" for p in patients)


def bundle(*patients: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": p} for p in patients]}


@dataclass
class Mes:
    http: httpx.AsyncClient
    server: object  # test_auth_server.Server
    app: object
    inbox: Inbox

    @property
    def store(self):
        return self.app.state.context.store

    def token(self, scope: str = "system/Patient.cruds system/DocumentReference.cruds") -> dict[str, str]:
        raw = self.server.auth.mint_access_token(client_id="cnam-registry", scope=scope, lifetime=DAY)
        return {"Authorization": f"Bearer {raw}"}

    async def feed(self, body: bytes | dict, content_type: str | None = None, headers: dict | None = None):
        if isinstance(body, dict):
            body, content_type = orjson.dumps(body), content_type or "application/fhir+json"
        return await self.http.post("/Patient/$registry-import", content=body,
                                    headers={"Content-Type": content_type or "application/fhir+ndjson",
                                             **(self.token() if headers is None else headers)})  # fmt: skip

    async def patient(self, number: str) -> dict:
        r = await self.http.get(f"/Patient?identifier={INS_NIR}|{number}", headers=self.token())
        assert r.status_code == 200, r.text
        (entry,) = r.json()["entry"]
        return entry["resource"]

    async def emails(self) -> list[tuple[str, str]]:
        """(recipient, text) of what the delivery worker sends now."""
        await self.app.state.deliverer.run_once()
        sent = [(to[0], m.get_body(("plain",)).get_content()) for to, m, _ in self.inbox.messages]
        self.inbox.messages.clear()
        return sent

    async def code_for(self, address: str) -> str:
        texts = [text for to, text in await self.emails() if to == address]
        assert texts, f"no email to {address}"
        return CODE.findall(texts[-1])[0]

    async def trail(self, patient_id: str) -> list[dict]:
        found = await self.store.search(parse("AuditEvent", [("patient", f"Patient/{patient_id}")]), 1000)
        return [orjson.loads(v.body) for v in found]

    async def operations(self, patient_id: str) -> list[str]:
        names = []
        for event in await self.trail(patient_id):
            names += [e["name"] for e in event.get("entity", ()) if e.get("name")]
        return names

    async def post(self, step: str, **fields: str) -> httpx.Response:
        return await self.http.post(f"/auth/space/{step}", data=fields)


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    for controller in smtp_server(inbox):
        yield controller, inbox


@contextlib.asynccontextmanager
async def mes_space(store_url: str, smtp: Controller, inbox: Inbox, **settings: object) -> AsyncIterator[Mes]:
    async with running(store_url, validation_processes=0, smtp_host="127.0.0.1", smtp_port=smtp.port,
                       **settings) as server:  # fmt: skip
        await server.app.state.deliverer.stop()  # the test drives delivery (run_once)
        yield Mes(server.http, server, server.app, inbox)


@pytest.fixture
async def mes(store_url: str, smtp_inbox) -> AsyncIterator[Mes]:
    CLOCK.reset()
    try:
        async with mes_space(store_url, *smtp_inbox) as m:
            yield m
    finally:
        CLOCK.reset()


def pdf_text(content: bytes) -> str:
    assert content.startswith(b"%PDF")
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


# --- the registry feed --------------------------------------------------------------------------------------
async def test_the_registry_feed_creates_pending_spaces_and_sends_the_codes(mes: Mes):
    r = await mes.feed(ndjson(registry_patient(LEA, email="lea@example.org"),
                              registry_patient(MARC, family="Durand", given="Marc")))  # fmt: skip
    assert r.status_code == 200, r.text
    assert {p["name"]: p["valueInteger"] for p in r.json()["parameter"]} == {"created": 2, "updated": 0,
                                                                             "unchanged": 0}  # fmt: skip
    lea = await mes.patient(LEA)
    space = status.read(lea)
    assert lea["active"] is False and space is not None and space.status == status.PENDING
    notified, deadline = (datetime.fromisoformat(t) for t in (space.notified, space.deadline))
    assert (deadline - notified).days == 42
    assert all(i["system"] != VITALE_SERIAL for i in lea["identifier"])  # the card is not in the record
    assert SERIAL[LEA] not in json.dumps(lea)
    # Léa has an email: her code comes by email, with how to activate and to object
    ((to, text),) = await mes.emails()
    assert to == "lea@example.org" and "Bonjour Léa Martin" in text
    code = CODE.findall(text)[0]
    assert f"{BASE}/auth/space/activate" in text and f"{BASE}/auth/space/oppose" in text
    assert f"{BASE}/auth/space/enrolment-code" in text and deadline.strftime("%d/%m/%Y") in text
    # Marc has none: a letter in his record, from the insurer, not a notification of the notification centre
    marc = await mes.patient(MARC)
    r = await mes.http.get(f"/Communication?subject=Patient/{marc['id']}", headers=mes.token("system/*.rs"))
    (letter,) = [e["resource"] for e in r.json()["entry"]]
    assert letter["category"][0]["coding"][0]["system"] == LETTER and letter["sender"]["display"]
    assert CODE.search(letter["payload"][0]["contentString"])
    # traced, without the code or the card number
    assert {"registry-import", "space-notify"} <= set(await mes.operations(lea["id"]))
    trail = json.dumps(await mes.trail(lea["id"]))
    assert code not in trail and code.replace("-", "") not in trail and SERIAL[LEA] not in trail
    if mes.server.auth.state_url.startswith("sqlite"):  # the auth state file holds neither in clear
        raw = (Path(mes.server.auth.state_url.removeprefix("sqlite:///"))).read_bytes()
        assert code.encode() not in raw and code.replace("-", "").encode() not in raw
        assert SERIAL[LEA].encode() not in raw


async def test_the_registry_feed_is_idempotent_by_ins_and_updates_demographics_only(mes: Mes):
    people = bundle(registry_patient(LEA, email="lea@example.org"), registry_patient(MARC, given="Marc"))
    assert (await mes.feed(people)).status_code == 200
    lea = await mes.patient(LEA)
    lea["generalPractitioner"] = [{"reference": "Practitioner/gp"}]
    r = await mes.http.put(f"/Patient/{lea['id']}", json=lea, headers=mes.token())
    assert r.status_code == 200, r.text
    await mes.emails()
    # the same data again: nothing written, nobody notified again
    r = await mes.feed(people)
    assert [p["valueInteger"] for p in r.json()["parameter"]] == [0, 0, 2]
    assert (await mes.patient(LEA))["meta"]["versionId"] == "2" and await mes.emails() == []
    # a new name and email: the same Patient, its space and médecin traitant kept
    moved = registry_patient(LEA, email="lea.martin@example.org", family="Martin-Roux")
    r = await mes.feed(ndjson(moved), "application/x-ndjson")
    assert [p["valueInteger"] for p in r.json()["parameter"]] == [0, 1, 0]
    after = await mes.patient(LEA)
    assert after["id"] == lea["id"] and after["meta"]["versionId"] == "3"
    assert after["name"][0]["family"] == "Martin-Roux" and after["telecom"][0]["value"] == "lea.martin@example.org"
    assert after["generalPractitioner"] == [{"reference": "Practitioner/gp"}]
    assert status.read(after) == status.read(lea)
    assert "registry-import" in await mes.operations(lea["id"])


async def test_the_registry_feed_refuses_bad_entries_and_writes_nothing(mes: Mes):
    bad = registry_patient(MARC)
    bad["identifier"][0]["value"] = MARC[:-2] + f"{(int(MARC[-2:]) + 1) % 97:02d}"  # a wrong key
    no_birth = {k: v for k, v in registry_patient(NOE).items() if k != "birthDate"}
    r = await mes.feed(bundle(registry_patient(LEA), bad, no_birth))
    assert r.status_code == 400
    issues = r.json()["issue"]
    assert [i["expression"] for i in issues] == [["Bundle.entry[1]"], ["Bundle.entry[2]"]]
    assert "valid NIR" in issues[0]["diagnostics"] and "birthDate" in issues[1]["diagnostics"]
    assert MARC[:-2] not in r.text  # the message names the entry, never its values
    r = await mes.http.get(f"/Patient?identifier={INS_NIR}|{LEA}", headers=mes.token())
    assert r.json()["total"] == 0 and await mes.emails() == []
    r = await mes.feed(b'{"resourceType": "Patient"\n', "application/fhir+ndjson")
    assert r.status_code == 400 and "line 1" in r.text
    assert (await mes.feed(b"{}", "text/plain")).status_code == 415


async def test_the_registry_feed_needs_a_system_token_that_writes_patients(mes: Mes):
    people = ndjson(registry_patient(LEA))
    assert (await mes.feed(people, headers=mes.token("system/Patient.rs"))).status_code == 403
    patient_side = mes.server.auth.mint_access_token(client_id="app", scope="patient/*.cruds", patient="x",
                                                    fhir_user="Patient/x", lifetime=DAY)  # fmt: skip
    r = await mes.feed(people, headers={"Authorization": f"Bearer {patient_side}"})
    assert r.status_code == 403
    assert (await mes.feed(people, headers={})).status_code == 401


async def test_a_dependant_is_handed_to_the_representatives(mes: Mes, monkeypatch: pytest.MonkeyPatch):
    seen: list[tuple[str, str]] = []

    async def representative(tx, dependant, now):
        seen.append((dependant["id"], dependant["extension"][0]["valueIdentifier"]["value"]))

    monkeypatch.setattr("fhir_server.space.registry.registry_representative", representative)
    r = await mes.feed(ndjson(registry_patient(LEA), registry_patient(NOE, given="Noé", opener=LEA)))
    assert r.status_code == 200
    noe = await mes.patient(NOE)
    assert seen == [(noe["id"], LEA)]  # the dependant only, in the import's unit of work
    refused = registry_patient(NOE, opener=NOE)
    assert (await mes.feed(ndjson(refused))).status_code == 400


async def test_a_minor_dependant_gets_the_insured_person_as_legal_representative(mes: Mes):
    r = await mes.feed(ndjson(registry_patient(LEA), registry_patient(NOE, given="Noé", opener=LEA)))
    assert r.status_code == 200
    noe = await mes.patient(NOE)
    r = await mes.http.get(f"/RelatedPerson?patient=Patient/{noe['id']}", headers=mes.token("system/*.rs"))
    (representative,) = [e["resource"] for e in r.json()["entry"]]
    assert {"system": INS_NIR, "value": LEA} in [
        {k: i[k] for k in ("system", "value")} for i in representative.get("identifier", ())
    ]
    assert (await mes.feed(ndjson(registry_patient(NOE, given="Noé", opener=LEA)))).json()["parameter"][2] == {
        "name": "unchanged",
        "valueInteger": 1,
    }


def test_the_command_line_imports_and_sweeps(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture):
    CLOCK.reset()
    feed = tmp_path / "registry.ndjson"
    feed.write_bytes(ndjson(registry_patient(LEA, email="lea@example.org")) + b"not json\n"
                     + ndjson(registry_patient(MARC)))  # fmt: skip
    try:
        assert cli(["patients", "import", str(feed), "--store", store_url]) == 1
        out, err = capsys.readouterr()
        assert "2 created, 0 updated, 0 unchanged, 1 refused" in out and "line 2: not a JSON object" in err
        assert cli(["patients", "import", str(feed), "--store", store_url]) == 1
        assert "0 created, 0 updated, 2 unchanged" in capsys.readouterr().out
        assert cli(["space", "sweep", "--store", store_url]) == 0
        assert "0 space(s) created" in capsys.readouterr().out
        CLOCK.advance(days=43)
        assert cli(["space", "sweep", "--store", store_url]) == 0
        assert "2 space(s) created" in capsys.readouterr().out

        async def states() -> tuple[list[tuple[str, bool]], list[str]]:
            async with open_store(store_url) as store:
                found = await store.search(parse("Patient", [(status.STATUS_PARAM, "created")]), 10)
                bodies = [orjson.loads(v.body) for v in found]
                return [(status.read(b).status, b["active"]) for b in bodies], [
                    m.payload["to"] for m in await store.outbox_items()
                ]

        assert asyncio.run(states()) == ([("created", True)] * 2, ["lea@example.org"])
    finally:
        CLOCK.reset()


# --- opposition -------------------------------------------------------------------------------------------
async def test_opposition_gives_a_pdf_proof_and_no_document_can_be_deposited(mes: Mes):
    await mes.feed(ndjson(registry_patient(LEA, email="lea@example.org")))
    code = await mes.code_for("lea@example.org")
    r = await mes.post("oppose", nir=LEA, vitale_serial=SERIAL[LEA], code=code.lower().replace("-", " "))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf" and r.headers["x-space-status"] == "opposed"
    reference = r.headers["x-proof-reference"]
    text = pdf_text(r.content)
    assert "Attestation d'opposition" in text and "Léa Martin" in text and LEA in text and reference in text
    assert "12/04/1990" in text
    lea = await mes.patient(LEA)
    space = status.read(lea)
    assert lea["active"] is False and space.status == status.OPPOSED and space.opposed
    # the code is used: the same request again is refused
    assert (await mes.post("oppose", nir=LEA, vitale_serial=SERIAL[LEA], code=code)).status_code == 400
    # the proof again, later, with the birth date: the same reference
    CLOCK.advance(days=60)
    r = await mes.post("opposition-proof", nir=LEA, vitale_serial=SERIAL[LEA], birth_date=BIRTH[LEA])
    assert r.status_code == 200 and r.headers["x-proof-reference"] == reference and reference in pdf_text(r.content)
    # opposed, even past the deadline: no space, so no deposit
    doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{lea['id']}"},
           "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/x"}}]}  # fmt: skip
    r = await mes.http.post("/DocumentReference", json=doc, headers=mes.token())
    assert r.status_code == 422 and "opposé" in r.json()["issue"][0]["diagnostics"]
    assert (await mes.http.get("/DocumentReference", headers=mes.token("system/*.rs"))).json()["total"] == 0
    assert {"space-oppose", "space-opposition-proof"} <= set(await mes.operations(lea["id"]))
    assert code not in json.dumps(await mes.trail(lea["id"]))


async def test_a_late_opposition_closes_the_created_space(mes: Mes):
    await mes.feed(ndjson(registry_patient(LEA, email="lea@example.org")))
    code = await mes.code_for("lea@example.org")
    CLOCK.advance(days=50)  # created by the clock, before any sweep
    r = await mes.post("oppose", nir=LEA, vitale_serial=SERIAL[LEA], code=code)
    assert r.status_code == 200 and r.headers["x-space-status"] == "closed"
    text = pdf_text(r.content)
    assert "fermeture" in text.lower() and "conservées jusqu'au" in text
    space = status.read(await mes.patient(LEA))
    assert space.status == status.CLOSED and space.closure_reason == "opposition" and space.closed
    assert space.retain_until == (CLOCK.now() + timedelta(days=3653)).date().isoformat()
    r = await mes.post("opposition-proof", nir=LEA, vitale_serial=SERIAL[LEA], birth_date=BIRTH[LEA])
    assert r.status_code == 200 and r.headers["x-space-status"] == "closed"


# --- automatic creation -------------------------------------------------------------------------------------
async def test_spaces_are_created_after_the_opposition_period(mes: Mes):
    from fhir_server.space.sweep import sweep

    await mes.feed(ndjson(registry_patient(LEA), registry_patient(MARC)))
    settings = mes.app.state.settings
    assert await sweep(mes.store, settings, CLOCK.now()) == {"created": 0, "destroyed": 0}
    CLOCK.advance(days=41)
    assert (await sweep(mes.store, settings, CLOCK.now()))["created"] == 0
    CLOCK.advance(days=2)
    assert await sweep(mes.store, settings, CLOCK.now()) == {"created": 2, "destroyed": 0}
    lea = await mes.patient(LEA)
    space = status.read(lea)
    assert lea["active"] is True and space.status == status.CREATED and space.created == space.deadline
    r = await mes.http.get(f"/Patient?{status.STATUS_PARAM}=created", headers=mes.token())
    assert r.json()["total"] == 2
    assert (await sweep(mes.store, settings, CLOCK.now()))["created"] == 0  # done once
    ((event,),) = [[e for e in await mes.trail(lea["id"]) if any(x.get("name") == "space-create"
                                                                 for x in e.get("entity", ()))]]  # fmt: skip
    assert event["agent"][0]["who"]["identifier"]["value"] == BASE
    doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{lea['id']}"},
           "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/x"}}]}  # fmt: skip
    assert (await mes.http.post("/DocumentReference", json=doc, headers=mes.token())).status_code == 201


async def test_the_server_sweeps_in_the_background(tmp_path: Path, smtp_inbox):
    CLOCK.reset()
    try:
        async with mes_space(f"sqlite:///{tmp_path / 'fhir.db'}", *smtp_inbox, space_sweep_seconds=0.05) as m:
            await m.feed(ndjson(registry_patient(LEA)))
            CLOCK.advance(days=43)
            for _ in range(200):  # the server's task, not the test, makes the change
                if status.read(await m.patient(LEA)).status == status.CREATED:
                    break
                await asyncio.sleep(0.02)
            assert status.read(await m.patient(LEA)).status == status.CREATED
    finally:
        CLOCK.reset()


# --- activation ------------------------------------------------------------------------------------------
async def test_activation_creates_the_account_and_the_person_signs_in(mes: Mes):
    await mes.feed(ndjson(registry_patient(LEA, email="lea@example.org")))
    code = await mes.code_for("lea@example.org")
    lea = await mes.patient(LEA)
    form = {"nir": LEA, "vitale_serial": SERIAL[LEA], "code": code, "username": "lea.martin",
            "password": "correct horse battery"}  # fmt: skip
    assert (await mes.post("activate", **{**form, "password": "short"})).status_code == 400  # before any check
    r = await mes.http.post("/auth/space/activate", json=form)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["patient"] == f"Patient/{lea['id']}" and body["otpauth_uri"].startswith("otpauth://totp/")
    assert r.headers["cache-control"] == "no-store"
    after = await mes.patient(LEA)
    space = status.read(after)
    assert after["active"] is True and space.status == status.ACTIVE and space.activated and space.created
    # the code is used
    assert (await mes.post("activate", **{**form, "username": "other"})).status_code == 400
    # the new account signs in with its password and TOTP; its token is Léa's
    answer = answers("lea.martin", "correct horse battery", totp={"code": totp.code_at(body["totp_secret"])})
    tokens = await tokens_for(mes.server, answer)
    claims = mes.server.auth.verify_access_token(tokens["access_token"], BASE)
    assert claims["fhirUser"] == f"Patient/{lea['id']}" and claims["managed_patients"] == [lea["id"]]
    assert tokens["patient"] == lea["id"]
    r = await mes.http.get(f"/Patient/{lea['id']}", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 200
    assert "space-activate" in await mes.operations(lea["id"])


async def test_a_taken_username_is_409_and_the_code_stays_valid(mes: Mes):
    await mes.feed(ndjson(registry_patient(LEA, email="lea@example.org")))
    code = await mes.code_for("lea@example.org")
    form = {"nir": LEA, "vitale_serial": SERIAL[LEA], "code": code, "password": "correct horse battery"}
    r = await mes.post("activate", **form, username="zoe")  # test_auth_server's user
    assert r.status_code == 409 and r.json()["error"] == "username_taken"
    assert (await mes.post("activate", **form, username="lea")).status_code == 201


async def test_wrong_identifiers_all_get_the_same_answer(mes: Mes):
    await mes.feed(ndjson(registry_patient(LEA, email="lea@example.org"), registry_patient(MARC, email="m@x.org")))
    sent = dict(await mes.emails())
    lea_code, marc_code = CODE.findall(sent["lea@example.org"])[0], CODE.findall(sent["m@x.org"])[0]
    user = {"username": "someone", "password": "correct horse battery"}
    # Marc objects: his space is opposed
    assert (await mes.post("oppose", nir=MARC, vitale_serial=SERIAL[MARC], code=marc_code)).status_code == 200
    wrong = [
        {"nir": NOBODY, "vitale_serial": SERIAL[LEA], "code": lea_code},  # unknown NIR
        {"nir": "123", "vitale_serial": SERIAL[LEA], "code": lea_code},  # not a NIR
        {"nir": LEA, "vitale_serial": "8000000000", "code": lea_code},  # wrong card
        {"nir": LEA, "vitale_serial": SERIAL[LEA], "code": new_code()},  # wrong code
        {"nir": LEA, "vitale_serial": SERIAL[LEA], "code": marc_code},  # someone else's code
        {"nir": MARC, "vitale_serial": SERIAL[MARC], "code": marc_code},  # used code, opposed space
    ]

    async def ask(step: str, **fields: str) -> httpx.Response:
        answer = await mes.post(step, **fields)
        for key in [nir_key(n) for n in (LEA, MARC, NOBODY, "123")] + ["mes-space:ip:127.0.0.1"]:
            mes.server.auth.state.reset(key)  # this test compares answers, the throttle has its own
        return answer

    answers_ = [await ask("activate", **w, **user) for w in wrong]
    answers_ += [await ask("oppose", **w) for w in wrong]
    answers_ += [
        await ask("opposition-proof", nir=LEA, vitale_serial=SERIAL[LEA], birth_date="1990-04-13"),
        await ask("opposition-proof", nir=LEA, vitale_serial=SERIAL[LEA], birth_date=BIRTH[LEA]),
    ]
    assert {(a.status_code, a.content) for a in answers_} == {(400, answers_[0].content)}
    assert answers_[0].json()["error"] == "invalid_identifiers"
    # an expired code: the same answer (the clock past enrolment_code_days)
    CLOCK.advance(days=91)
    r = await ask("activate", nir=LEA, vitale_serial=SERIAL[LEA], code=lea_code, **user)
    assert (r.status_code, r.content) == (400, answers_[0].content)


async def test_guessing_the_code_locks_the_nir_whatever_comes_next(mes: Mes):
    await mes.feed(ndjson(registry_patient(LEA, email="lea@example.org")))
    code = await mes.code_for("lea@example.org")
    user = {"username": "lea", "password": "correct horse battery"}
    for _ in range(NIR_LIMIT):
        r = await mes.post("activate", nir=LEA, vitale_serial=SERIAL[LEA], code=new_code(), **user)
        assert r.status_code == 400
    locked = await mes.post("activate", nir=LEA, vitale_serial=SERIAL[LEA], code=code, **user)  # the right one
    assert locked.status_code == 429 and locked.headers["retry-after"]
    # an unknown NIR locked the same way looks the same
    for _ in range(NIR_LIMIT):
        await mes.post("activate", nir=NOBODY, vitale_serial=SERIAL[LEA], code=new_code(), **user)
    unknown = await mes.post("activate", nir=NOBODY, vitale_serial=SERIAL[LEA], code=code, **user)
    assert (unknown.status_code, unknown.content) == (locked.status_code, locked.content)
    # other steps are locked too for that NIR; the window over, the right code works
    assert (await mes.post("oppose", nir=LEA, vitale_serial=SERIAL[LEA], code=code)).status_code == 429
    CLOCK.advance(hours=1, seconds=1)
    assert (await mes.post("activate", nir=LEA, vitale_serial=SERIAL[LEA], code=code, **user)).status_code == 201


async def test_one_address_guessing_many_nirs_is_locked(mes: Mes):
    await mes.feed(ndjson(registry_patient(LEA, email="lea@example.org")))
    code = await mes.code_for("lea@example.org")
    for i in range(IP_LIMIT):  # never more than NIR_LIMIT - 1 for one NIR: only the address counter trips
        number = nir(f"17701750{i // (NIR_LIMIT - 1):05d}")
        r = await mes.post("oppose", nir=number, vitale_serial="1", code=new_code())
        assert r.status_code == 400
    assert (await mes.post("oppose", nir=LEA, vitale_serial=SERIAL[LEA], code=code)).status_code == 429


# --- a new code ---------------------------------------------------------------------------------------------
async def test_a_new_code_revokes_the_previous_one(mes: Mes):
    await mes.feed(ndjson(registry_patient(LEA, email="lea@example.org"), registry_patient(MARC)))
    first = await mes.code_for("lea@example.org")
    mismatch = await mes.post("enrolment-code", nir=LEA, vitale_serial=SERIAL[LEA], birth_date="1990-01-01")
    unknown = await mes.post("enrolment-code", nir=NOBODY, vitale_serial="1", birth_date=BIRTH[LEA])
    match = await mes.post("enrolment-code", nir=LEA, vitale_serial=SERIAL[LEA], birth_date=BIRTH[LEA])
    assert {(a.status_code, a.content) for a in (mismatch, unknown, match)} == {(202, match.content)}
    second = await mes.code_for("lea@example.org")
    assert second != first
    form = {"nir": LEA, "vitale_serial": SERIAL[LEA], "username": "lea", "password": "correct horse battery"}
    assert (await mes.post("activate", **form, code=first)).status_code == 400
    # without an email address, the new code is a letter in the record
    marc = await mes.patient(MARC)
    r = await mes.http.post("/auth/space/enrolment-code",
                            json={"nir": MARC, "vitale_serial": SERIAL[MARC], "birth_date": BIRTH[MARC]})  # fmt: skip
    assert r.status_code == 202
    r = await mes.http.get(f"/Communication?subject=Patient/{marc['id']}", headers=mes.token("system/*.rs"))
    assert r.json()["total"] == 2
    assert (await mes.post("activate", **form, code=second)).status_code == 201
    lea = await mes.patient(LEA)
    assert "enrolment-code" in await mes.operations(lea["id"])
    # an active space gets no new code (it has an account)
    await mes.post("enrolment-code", nir=LEA, vitale_serial=SERIAL[LEA], birth_date=BIRTH[LEA])
    assert await mes.emails() == []


async def test_missing_fields_are_a_plain_400(mes: Mes):
    r = await mes.post("activate", nir=LEA)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request" and "vitale_serial" in r.text
    r = await mes.http.post("/auth/space/oppose", content=b"[1]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


# --- units ---------------------------------------------------------------------------------------------------
def test_codes_are_random_and_unambiguous():
    codes = {new_code() for _ in range(2000)}
    assert len(codes) == 2000
    assert all(re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", c) for c in codes)
    assert not set("".join(codes)) & set("01OIL")
    assert len(ALPHABET) ** 12 > 2**50


def test_nir_keys():
    assert valid_nir(LEA) and not valid_nir(LEA[:-2] + f"{(int(LEA[-2:]) + 1) % 97:02d}") and not valid_nir(LEA[:-1])
    corsica = "16902" + "2A" + "341735"  # a birth in Corse-du-Sud: 2A counts as 19 in the key
    key = 97 - int(corsica.replace("2A", "19")) % 97
    assert valid_nir(f"{corsica}{key:02d}") and not valid_nir(f"{corsica}{(key + 1) % 97:02d}")


async def test_professionals_never_read_the_enrolment_letter(mes: Mes):
    """The letter carries the code in clear (it is what the insurer posts): the médecin traitant, who reads the
    rest of the record, gets neither the letter nor its count."""
    assert (await mes.feed(ndjson(registry_patient(MARC, family="Durand", given="Marc")))).status_code == 200
    marc = await mes.patient(MARC)
    system = mes.token("system/*.cruds")
    CLOCK.advance(days=43)  # the space exists: the médecin traitant reads the record, deposits are taken
    marc["generalPractitioner"] = [{"reference": "PractitionerRole/r-gp"}]
    assert (await mes.http.put(f"/Patient/{marc['id']}", json=marc, headers=system)).status_code == 200
    note = {"resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{marc['id']}"},
            "payload": [{"contentString": "Rendez-vous de contrôle le 12/01"}]}  # fmt: skip
    assert (await mes.http.post("/Communication", json=note, headers=system)).status_code == 201
    ps = {"idNatPs": "gp", "profession": "10", "practitioner": "Practitioner/gp", "role": "PractitionerRole/r-gp",
          "organization": "Organization/org"}  # fmt: skip
    raw = mes.server.auth.mint_access_token(client_id="ehr", scope="user/*.rs", fhir_user="PractitionerRole/r-gp",
                                            lifetime=DAY, extra={"ps": ps})  # fmt: skip
    gp = {"Authorization": f"Bearer {raw}"}
    r = await mes.http.get(f"/Communication?subject=Patient/{marc['id']}&_total=accurate", headers=gp)
    assert r.status_code == 200, r.text
    found = [e["resource"] for e in r.json().get("entry", ())]
    assert r.json()["total"] == 1 and [c["payload"][0]["contentString"] for c in found] == [note["payload"][0][
        "contentString"]]  # fmt: skip
    letters = await mes.http.get(f"/Communication?subject=Patient/{marc['id']}&category={LETTER}|", headers=system)
    (letter,) = letters.json()["entry"]
    assert (await mes.http.get(f"/Communication/{letter['resource']['id']}", headers=gp)).status_code == 404


async def test_the_links_of_the_letters_open_a_form_for_each_step(mes: Mes):
    """What the email or letter links to: a page whose form posts the step's fields to the same address."""
    steps = {"activate": ("nir", "vitale_serial", "code", "username", "password"),
             "oppose": ("nir", "vitale_serial", "code"),
             "opposition-proof": ("nir", "vitale_serial", "birth_date"),
             "enrolment-code": ("nir", "vitale_serial", "birth_date")}  # fmt: skip
    for step, names in steps.items():
        r = await mes.http.get(f"/auth/space/{step}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), step
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert f'action="/auth/space/{step}"' in r.text
        assert re.findall(r'<input [^>]*name="([a-z_]+)"', r.text) == list(names)

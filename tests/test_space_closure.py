"""Closing, reopening and destroying a person's space (``Patient/[id]/$close``, ``$reopen``, the retention
sweep's ``destroy_due``), on both stores: who may, what professionals still reach (leak probes), the PDSm4DMP
status answer, and a scan of the raw store after a deletion (every SQLite table, every MongoDB collection).

Léa's record is test_policy's (a document of each class, a médecin traitant, authorised professionals); Zoé
Quenneville has a record of her own, with distinctive words, for the deletion scan. Tokens come from the
stand-in verifier of test_access_control; the accounts (passwords) live in the real auth state beside the
store, as the server keeps them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import FHIR_BASE
from test_access_control import StandInVerifier, ids, token
from test_policy import binary, consent, directory, document, exported_ids, ps_token, record

from fhir_server.app import create_app
from fhir_server.auth.state import AuthState, default_state_url, open_auth_state
from fhir_server.auth.users import new_user
from fhir_server.config import Settings
from fhir_server.policy.codes import INS_NIR
from fhir_server.space import closure, status
from fhir_server.space.clock import CLOCK
from fhir_server.store import sqlite_path
from fhir_server.store.query import Search

LONG = {"exp": int(time.time()) + 24 * 3600}  # minted at import: valid however long the suite runs
PASSWORD = "correct horse battery"
LOINC = "http://loinc.org"
RETENTION_DAYS = 30


def ins(nir13: str) -> str:
    """An INS-NIR with its key (97 - NIR mod 97)."""
    return f"{nir13}{97 - int(nir13) % 97:02d}"


LEA_INS, ZOE_INS = ins("2830575123456"), ins("2910369123789")
LEA_EMAIL, ZOE_EMAIL = "lea.marchand@example.org", "zoe.quenneville@example.org"
ZOE = "zoe-quenneville"
ZOE_TEXT = "Scintigraphie thyroidienne Quenneville nodule froid"  # words only her document holds


def lea_token(**claims) -> dict[str, str]:
    claims = {"client_id": "mes-app", "sub": LEA_EMAIL, "fhirUser": "Patient/lea", "patient": "lea", **LONG, **claims}
    return token("patient/*.cruds", **claims)


def zoe_token() -> dict[str, str]:
    return token("patient/*.cruds", client_id="mes-app", sub=ZOE_EMAIL, fhirUser=f"Patient/{ZOE}", patient=ZOE,
                 **LONG)  # fmt: skip


LEA, ZOE_H = lea_token(), zoe_token()
MED, GP = ps_token("med", **LONG), ps_token("gp", **LONG)
SYSTEM = token("system/*.cruds", client_id="feed", sub="feed", **LONG)


def person(id_: str, nir: str, family: str, given: str, email: str, gp: bool = True) -> dict:
    space = status.Space(status=status.ACTIVE, created="2025-01-01T00:00:00+00:00",
                         activated="2025-01-02T00:00:00+00:00")  # fmt: skip
    patient = {"resourceType": "Patient", "id": id_,
               "identifier": [{"use": "official", "system": INS_NIR, "value": nir}],
               "name": [{"family": family, "given": [given]}], "gender": "female", "birthDate": "1983-05-12",
               "telecom": [{"system": "email", "value": email}]}  # fmt: skip
    if gp:
        patient["generalPractitioner"] = [{"reference": "PractitionerRole/r-gp"}]
    return status.write(patient, space)


def zoe_record() -> list[dict]:
    cr = document("zoe-cr", ZOE, (LOINC, "11488-4"))
    cr["description"] = ZOE_TEXT
    pdf = binary("zoe-cr")
    pdf["data"] = base64.b64encode(ZOE_TEXT.encode()).decode()
    own = binary("zoe-own")  # a Binary in the Patient's own security context
    own["securityContext"] = {"reference": f"Patient/{ZOE}"}
    return [
        person(ZOE, ZOE_INS, "Quenneville", "Zoé", ZOE_EMAIL),
        cr, pdf, own,
        {"resourceType": "Observation", "id": "zoe-weight", "status": "final", "code": {"text": "poids"},
         "subject": {"reference": f"Patient/{ZOE}"}, "valueQuantity": {"value": 61, "unit": "kg"}},
        {"resourceType": "RelatedPerson", "id": "zoe-sister", "patient": {"reference": f"Patient/{ZOE}"},
         "name": [{"family": "Quenneville", "given": ["Inès"]}]},
        consent("zoe-permit-med", ZOE, "permit", ("PractitionerRole/r-med",)),
    ]  # fmt: skip


@dataclass
class Mes:
    client: httpx.AsyncClient
    app: object
    accounts: AuthState
    store_url: str

    @property
    def store(self):
        return self.app.state.context.store  # type: ignore[attr-defined]

    async def close(self, headers: dict, patient: str = "lea", **params) -> httpx.Response:
        return await self.client.post(f"/Patient/{patient}/$close", json=parameters(**params), headers=headers)

    async def reopen(self, headers: dict, patient: str = "lea", **params) -> httpx.Response:
        return await self.client.post(f"/Patient/{patient}/$reopen", json=parameters(**params), headers=headers)


def parameters(**values) -> dict:
    kinds = {bool: "valueBoolean", str: "valueString"}
    out = []
    for name, value in values.items():
        kind = "valueCode" if name == "reason" else kinds[type(value)]
        out.append({"name": name, kind: value})
    return {"resourceType": "Parameters", "parameter": out}


class Verifier(StandInVerifier):
    """The stand-in token verifier, with the auth state the real authorization server would hold."""

    def __init__(self, state: AuthState) -> None:
        super().__init__()
        self.state = state


@contextlib.asynccontextmanager
async def mes_server(store_url: str, exports: Path) -> AsyncIterator[Mes]:
    settings = Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0,
                        space_retention_days=RETENTION_DAYS, smtp_host="127.0.0.1", smtp_port=9,
                        portal_url="https://portail.example/mes")  # fmt: skip
    app = create_app(settings)
    accounts = open_auth_state(default_state_url(store_url))
    transport = httpx.ASGITransport(app=app)
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
            await app.state.deliverer.stop()  # notifications stay in the outbox (what the deletion must clear)
            app.state.exports.directory = exports
            seed = directory() + record() + zoe_record()
            seed[seed.index(next(r for r in seed if r.get("id") == "lea"))] = person(
                "lea", LEA_INS, "Marchand", "Léa", LEA_EMAIL
            )
            for resource in seed:
                r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
                assert r.status_code == 201, r.text
            for username, patient in ((LEA_EMAIL, "lea"), (ZOE_EMAIL, ZOE)):
                user = new_user(username, PASSWORD, fhir_user=f"Patient/{patient}", name=username.split("@")[0])
                accounts.put_user(user.to_doc())
            app.state.auth = Verifier(accounts)
            yield Mes(c, app, accounts, store_url)
    finally:
        accounts.close()
        CLOCK.reset()


@pytest.fixture
async def mes(store_url: str, tmp_path: Path) -> AsyncIterator[Mes]:
    async with mes_server(store_url, tmp_path / "exports") as m:
        yield m


async def entries(c: httpx.AsyncClient, url: str, headers: dict) -> list[dict]:
    r = await c.get(url, headers=headers)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", ())]


def space_of(patient: dict) -> status.Space:
    found = status.read(patient)
    assert found is not None
    return found


# --- who may close -------------------------------------------------------------------------------------------
async def test_only_the_person_with_their_password_closes(mes: Mes):
    c = mes.client
    assert (await mes.close(GP, password=PASSWORD)).status_code == 403  # sees the Patient, is not the person
    max_token = token("patient/*.cruds", sub="max@example.org", fhirUser="Patient/max", patient="max", **LONG)
    assert (await mes.close(max_token, password=PASSWORD)).status_code == 404  # cannot see Léa at all
    assert (await mes.close(LEA)).status_code == 400  # no password
    wrong = await mes.close(LEA, password="not my password")
    assert wrong.status_code == 403 and wrong.json()["issue"][0]["diagnostics"] == "The password is not correct"
    # someone else's password, or a token whose account is someone else's: the same answer
    assert (await mes.close(lea_token(sub=ZOE_EMAIL), password=PASSWORD)).json() == wrong.json()
    assert (await mes.close(lea_token(sub="nobody@example.org"), password=PASSWORD)).json() == wrong.json()
    patient = (await c.get("/Patient/lea", headers=LEA)).json()
    assert patient["meta"]["versionId"] == "1" and space_of(patient).status == status.ACTIVE


async def test_wrong_passwords_are_throttled(mes: Mes):
    for _ in range(closure.throttle.USER_LIMIT):
        assert (await mes.close(LEA, password="guess")).status_code == 403
    locked = await mes.close(LEA, password=PASSWORD)  # even the right one, until the window ends
    assert locked.status_code == 429 and "retry-after" in locked.headers
    assert space_of((await mes.client.get("/Patient/lea", headers=LEA)).json()).status == status.ACTIVE
    # Zoé's account is not Léa's: her closure is not held back
    assert (await mes.close(ZOE_H, ZOE, password=PASSWORD)).status_code == 200


# --- closure: professionals lose access at once ----------------------------------------------------------------
async def probes(c: httpx.AsyncClient, h: dict) -> dict[str, object]:
    """What a professional reaches of Léa's record by every channel (ids, totals, statuses)."""
    ins_query = f"{INS_NIR}|{LEA_INS}"
    out: dict[str, object] = {}
    out["read"] = (await c.get("/DocumentReference/lea-cr", headers=h)).status_code
    out["binary"] = (await c.get("/Binary/bin-lea-cr", headers=h)).status_code
    out["vread"] = (await c.get("/DocumentReference/lea-cr/_history/1", headers=h)).status_code
    out["observation"] = (await c.get("/Observation/lea-weight", headers=h)).status_code
    total = await c.get("/DocumentReference?subject=Patient/lea&_total=accurate", headers=h)
    out["total"] = total.json().get("total")
    out["summary"] = (await c.get("/Observation?subject=Patient/lea&_summary=count", headers=h)).json().get("total")
    revinclude = "/Patient?_id=lea&_revinclude=DocumentReference:subject&_revinclude=Observation:subject"
    out["revinclude"] = sorted(r["id"] for r in await entries(c, revinclude, h))
    out["include"] = len(await entries(c, "/DocumentReference?_id=lea-cr&_include=DocumentReference:subject", h))
    out["chain"] = len(await entries(c, f"/DocumentReference?subject.identifier={ins_query}", h))
    out["has"] = len(await entries(c, "/Patient?_id=lea&_has:Observation:subject:status=final", h))
    # a confined token gets no type history: instance history it is
    for name, path in (
        ("history", "/DocumentReference/lea-cr/_history"),
        ("obs-history", "/Observation/lea-weight/_history"),
    ):
        history = await c.get(path, headers=h)
        out[name] = len(history.json().get("entry", ())) if history.status_code == 200 else history.status_code
    everything = await c.get("/Patient/lea/$everything", headers=h)
    answered = [e["resource"] for e in everything.json().get("entry", ())] if everything.status_code == 200 else []
    directory_or_patient = ("Patient", "Practitioner", "PractitionerRole", "Organization")
    out["everything"] = sorted(r["id"] for r in answered if r["resourceType"] not in directory_or_patient)
    return out


CLOSED_PROBES = {"read": 404, "binary": 404, "vread": 404, "observation": 404, "total": 0, "summary": 0,
                 "revinclude": ["lea"], "include": 0, "chain": 0, "has": 0, "everything": []}  # fmt: skip


async def test_closing_shuts_every_professional_out_at_once(mes: Mes):
    c = mes.client
    for h in (MED, GP):  # before: the authorised professional and the médecin traitant read the record
        before = await probes(c, h)
        assert before["read"] == before["binary"] == before["observation"] == 200 and before["total"], before
        assert before["chain"] and before["has"] == 1 and "lea-cr" in before["revinclude"], before
        assert before["history"] == before["obs-history"] == 1 and "lea-cr" in before["everything"], before
    # The bulk export runs the same store conditions as the searches above; it is slow on the MongoDB stand-in
    # (its export under the policy is tested on both stores by tests/test_policy.py): SQLite only here.
    exporting = mes.store_url.startswith("sqlite")
    if exporting:
        exported = await exported_ids(c, "/Patient/$export?_type=DocumentReference,Observation", MED)
        assert {"lea-cr", "lea-weight"} <= exported
    r = await mes.close(LEA, password=PASSWORD)
    assert r.status_code == 200, r.text
    patient = r.json()
    today = CLOCK.today()
    space = space_of(patient)
    assert patient["active"] is False and patient["meta"]["versionId"] == "2"
    assert space.status == status.CLOSED and space.closure_reason == "patient-request"
    assert space.retain_until == (today + timedelta(days=RETENTION_DAYS)).isoformat()
    assert space.closed is not None and space.closed.startswith(today.isoformat())
    assert space.activated == "2025-01-02T00:00:00+00:00"  # kept: a reopening returns to active
    for h in (MED, GP):
        found = await probes(c, h)
        histories = found.pop("history"), found.pop("obs-history")
        assert all(h in (404, 0) for h in histories), histories  # unknown, or nothing in it
        assert found == CLOSED_PROBES, found
    if exporting:
        exported = await exported_ids(c, "/Patient/$export?_type=DocumentReference,Observation", MED)
        assert not {i for i in exported if i.startswith("lea")}  # the bulk export too
    # a deposit answers 422, naming the closure, and stores nothing
    deposit = document("lea-new", "lea", (LOINC, "11488-4"))
    r = await c.put("/DocumentReference/lea-new", json=deposit, headers=MED)
    assert r.status_code == 422 and "fermé" in r.text and "closed" in r.text
    assert (await c.get("/DocumentReference/lea-new", headers=LEA)).status_code == 404
    # the person still reads their record; a second closure is refused
    assert (await c.get("/DocumentReference/lea-cr", headers=LEA)).status_code == 200
    assert (await mes.close(LEA, password=PASSWORD)).status_code == 409


async def test_the_closure_is_a_versioned_update_traced_as_a_write(mes: Mes):
    r = await mes.close(LEA, password=PASSWORD)
    assert r.status_code == 200
    history = await entries(mes.client, "/Patient/lea/_history", LEA)
    assert [h["meta"]["versionId"] for h in history] == ["2", "1"]
    events = [json.loads(e.body) for e in await mes.store.search(Search("AuditEvent", ()), 10_000)]
    writes = [e for e in events if e["subtype"][0]["code"] == "update"]
    assert len(writes) == 1 and writes[0]["action"] == "U"
    assert "Patient/lea/_history/2" in {entity["what"]["reference"] for entity in writes[0]["entity"]}
    assert writes[0]["agent"][0]["who"]["reference"] == "Patient/lea"


# --- the status professional software reads (PDSm4DMP) ----------------------------------------------------------
async def status_answer(c: httpx.AsyncClient, h: dict) -> dict:
    found = await entries(c, f"/Patient?identifier={INS_NIR}|{LEA_INS}", h)
    assert len(found) == 1
    return found[0]


async def test_professionals_read_the_status_of_open_and_closed_spaces_by_ins(mes: Mes):
    c = mes.client
    for h in (MED, ps_token("stranger", **LONG)):  # authorised or not: the identity and the status
        open_ = await status_answer(c, h)
        assert open_["active"] is True and space_of(open_).status == status.ACTIVE
        assert open_["generalPractitioner"] == [{"reference": "PractitionerRole/r-gp"}]
    assert (await mes.close(LEA, password=PASSWORD)).status_code == 200
    for h in (MED, GP, ps_token("stranger", **LONG)):
        closed = await status_answer(c, h)
        space = space_of(closed)
        assert closed["active"] is False and space.status == status.CLOSED
        assert space.closed is not None and space.closure_reason == "patient-request"
        [ext] = [e for e in closed["extension"] if e["url"] == status.SPACE]
        reason = next(s["valueCoding"] for s in ext["extension"] if s["url"] == "closureReason")
        assert reason == {"system": status.CLOSURE_REASON, "code": "patient-request",
                          "display": status.CLOSURE_REASONS["patient-request"]}  # fmt: skip
        assert closed["generalPractitioner"] == [{"reference": "PractitionerRole/r-gp"}]


# --- reopening --------------------------------------------------------------------------------------------------
async def test_reopening_restores_the_space_and_professional_access(mes: Mes):
    c = mes.client
    assert (await mes.reopen(LEA, password=PASSWORD)).status_code == 409  # not closed
    assert (await mes.close(LEA, password=PASSWORD)).status_code == 200
    assert (await mes.reopen(GP, password=PASSWORD)).status_code == 403
    assert (await mes.reopen(LEA, password="wrong password")).status_code == 403
    r = await mes.reopen(LEA, password=PASSWORD)
    assert r.status_code == 200, r.text
    patient = r.json()
    space = space_of(patient)
    assert patient["active"] is True and patient["meta"]["versionId"] == "3"
    assert space.status == status.ACTIVE  # it had been activated
    assert space.closed is None and space.closure_reason is None and space.retain_until is None
    for h in (MED, GP):
        found = await probes(c, h)
        assert found["read"] == found["binary"] == 200 and found["total"] and found["chain"], found
    # a space created but never activated goes back to created
    created = status.write({k: v for k, v in patient.items() if k != "meta"}, status.Space(status=status.CREATED))
    assert (await c.put("/Patient/lea", json=created, headers=SYSTEM)).status_code == 200
    assert (await mes.close(LEA, password=PASSWORD)).status_code == 200
    reopened = (await mes.reopen(LEA, password=PASSWORD)).json()
    assert reopened["active"] is True and space_of(reopened).status == status.CREATED
    # the retention sweep finds nothing to destroy in a reopened space, however late
    CLOCK.advance(days=RETENTION_DAYS + 2)
    assert await closure.destroy_due(mes.store, CLOCK.now(), accounts=mes.accounts) == 0


# --- destruction -----------------------------------------------------------------------------------------------
NEEDLES = (ZOE, ZOE_INS, "Quenneville", ZOE_EMAIL, ZOE_TEXT, base64.b64encode(ZOE_TEXT.encode()).decode())


def _hits(blob: bytes) -> set[str]:
    return {n for n in NEEDLES if n.encode() in blob}


def scan_sqlite(store_url: str) -> dict[str, set[str]]:
    """Every row of every table of the store's file and of the auth state beside it."""
    path = Path(sqlite_path(store_url))
    found: dict[str, set[str]] = {}
    for db in (path, path.parent / "auth.db"):
        conn = sqlite3.connect(db)
        try:
            tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            assert tables
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):  # names from sqlite_master
                    for cell in row:
                        blob = cell if isinstance(cell, bytes) else str(cell).encode()
                        if hits := _hits(blob):
                            found.setdefault(f"{db.name}:{table}", set()).update(hits)
        finally:
            conn.close()
    return found


def scan_sqlite_files(store_url: str) -> dict[str, set[str]]:
    """The bytes of the SQLite files themselves, after a checkpoint folded the write-ahead log in: what a copy of
    the disk would show (deleted content is overwritten: PRAGMA secure_delete)."""
    path = Path(sqlite_path(store_url))
    found: dict[str, set[str]] = {}
    for db in (path, path.parent / "auth.db"):
        conn = sqlite3.connect(db)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        for file in (db, db.with_name(db.name + "-wal")):
            if file.exists() and (hits := _hits(file.read_bytes())):
                found.setdefault(file.name, set()).update(hits)
    return found


def scan_mongo(store_url: str) -> dict[str, set[str]]:
    """Every document of every collection of the database (the store's and the auth state's)."""
    import bson
    from pymongo import MongoClient

    from fhir_server.store.mongo import database_name

    client: MongoClient = MongoClient(store_url, serverSelectionTimeoutMS=5000)
    found: dict[str, set[str]] = {}
    try:
        db = client[database_name(store_url)]
        names = db.list_collection_names()
        assert "auth_users" in names
        for name in names:
            for doc in db[name].find({}):
                if hits := _hits(bson.encode(doc)):
                    found.setdefault(name, set()).update(hits)
    finally:
        client.close()
    return found


def scan(mes: Mes) -> dict[str, set[str]]:
    return scan_sqlite(mes.store_url) if mes.store_url.startswith("sqlite") else scan_mongo(mes.store_url)


async def zoe_lives_her_life(mes: Mes) -> None:
    """Zoé's record gains what a life in the space leaves: a deleted measure, notification preferences, a
    Subscription of her app, notifications (a professional read her document) waiting in the outbox, a failed
    closure attempt, her own reads."""
    c = mes.client
    extra = {"resourceType": "Observation", "id": "zoe-old", "status": "final", "code": {"text": "Quenneville"},
             "subject": {"reference": f"Patient/{ZOE}"}}  # fmt: skip
    assert (await c.put("/Observation/zoe-old", json=extra, headers=ZOE_H)).status_code == 201
    assert (await c.delete("/Observation/zoe-old", headers=ZOE_H)).status_code in (200, 204)
    prefs = {"resourceType": "Parameters", "parameter": [{"name": "preference", "part": [
        {"name": "event", "valueCode": "document-added"}, {"name": "enabled", "valueBoolean": False}]}]}  # fmt: skip
    r = await c.post(f"/Patient/{ZOE}/$notification-preferences", json=prefs, headers=ZOE_H)
    assert r.status_code == 200, r.text
    subscription = {"resourceType": "Subscription", "status": "requested", "reason": "mes documents",
                    "criteria": f"DocumentReference?subject=Patient/{ZOE}",
                    "channel": {"type": "rest-hook", "endpoint": "https://app.example/hook",
                                "payload": "application/fhir+json"}}  # fmt: skip
    r = await c.post("/Subscription", json=subscription, headers=ZOE_H)
    assert r.status_code == 201, r.text
    assert (await c.get("/DocumentReference/zoe-cr", headers=MED)).status_code == 200  # notifies Zoé
    assert (await c.get("/Binary/bin-zoe-cr", headers=MED)).status_code == 200
    assert (await c.get("/Patient/zoe-quenneville/$everything", headers=ZOE_H)).status_code == 200
    assert (await mes.close(ZOE_H, ZOE, password="wrong guess")).status_code == 403
    assert (await c.get(f"/Patient/{ZOE}", headers=ZOE_H)).status_code == 200  # in the read cache (SQLite)


async def lea_snapshot(mes: Mes) -> dict[str, list[str]]:
    c = mes.client
    out = {}
    for type_ in ("DocumentReference", "Binary", "Observation", "Consent", "RelatedPerson", "Immunization"):
        out[type_] = sorted(ids({"entry": [{"resource": r} for r in await entries(c, f"/{type_}?_count=500", SYSTEM)]}))
    out["lea-history"] = [h["meta"]["versionId"] for h in await entries(c, "/Patient/lea/_history", SYSTEM)]
    return out


async def test_deletion_destroys_the_space_at_once_and_the_raw_store_keeps_nothing(mes: Mes):
    c = mes.client
    await zoe_lives_her_life(mes)
    assert await mes.store.outbox_items()  # her notification email waits
    assert scan(mes)  # the scan sees her data before
    before = await lea_snapshot(mes)
    if mes.store_url.startswith("sqlite"):
        assert scan_sqlite_files(mes.store_url)  # the bytes on disk hold her data before
    r = await mes.close(ZOE_H, ZOE, password=PASSWORD, deletion=True)
    assert r.status_code == 200, r.text
    assert "destroyed" in r.json()["issue"][0]["diagnostics"]
    assert scan(mes) == {}
    if mes.store_url.startswith("sqlite"):
        assert scan_sqlite_files(mes.store_url) == {}
    # the read cache does not answer for her, nor does anything else
    assert (await c.get(f"/Patient/{ZOE}", headers=ZOE_H)).status_code == 404
    assert (await c.get("/DocumentReference/zoe-cr", headers=SYSTEM)).status_code == 404
    assert (await c.get("/Binary/bin-zoe-cr", headers=SYSTEM)).status_code == 404
    assert (await c.get(f"/Patient?identifier={INS_NIR}|{ZOE_INS}", headers=MED)).json().get("total", 0) == 0
    assert (await mes.reopen(ZOE_H, ZOE, password=PASSWORD)).status_code == 404
    assert mes.accounts.get_user(ZOE_EMAIL) is None and mes.accounts.get_user(LEA_EMAIL) is not None
    assert await mes.store.outbox_items() == []
    # Léa's record is intact (less the seeded Zoé resources)
    after = await lea_snapshot(mes)
    zoe_ids = {"zoe-cr", "bin-zoe-cr", "bin-zoe-own", "zoe-weight", "zoe-sister", "zoe-permit-med"}
    assert after == {k: [i for i in v if i not in zoe_ids] for k, v in before.items()}
    assert (await c.get("/DocumentReference/lea-cr", headers=MED)).status_code == 200
    # the destruction is traced, naming nobody
    destroyed = [json.loads(v.body) for v in await mes.store.search(Search("AuditEvent", ()), 10_000)
                 if b'"destroy"' in v.body]  # fmt: skip
    assert len(destroyed) == 1
    event = destroyed[0]
    assert event["action"] == "D" and "Patient/" not in json.dumps(event)
    details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
    assert details["cause"] == "patient-deletion" and int(details["destroyed"]) >= 10
    assert [a["who"]["identifier"]["value"] for a in event["agent"]] == ["mes-app"]


async def test_an_interrupted_deletion_is_finished_by_the_sweep(mes: Mes, monkeypatch: pytest.MonkeyPatch):
    await zoe_lives_her_life(mes)

    async def crash(*args) -> None:
        raise RuntimeError("the server stopped here")

    monkeypatch.setattr(closure, "_clear_outbox", crash)
    with pytest.raises(RuntimeError):  # the ASGI transport re-raises what the app did not answer
        await mes.close(ZOE_H, ZOE, password=PASSWORD, deletion=True)
    assert scan(mes)  # half done: the Patient (marked for deletion) and her account are still there
    patient = await mes.store.read_current("Patient", ZOE)
    assert patient is not None and space_of(json.loads(patient.body)).closure_reason == closure.DELETION
    monkeypatch.undo()
    assert await closure.destroy_due(mes.store, CLOCK.now(), accounts=mes.accounts) == 1
    assert scan(mes) == {}
    assert await closure.destroy_due(mes.store, CLOCK.now(), accounts=mes.accounts) == 0  # nothing left to do


async def test_closed_spaces_are_destroyed_when_their_retention_is_over(mes: Mes):
    c = mes.client
    await zoe_lives_her_life(mes)
    assert (await mes.close(ZOE_H, ZOE, password=PASSWORD)).status_code == 200
    assert (await mes.close(LEA, password=PASSWORD)).status_code == 200
    assert (await mes.reopen(LEA, password=PASSWORD)).status_code == 200  # reopened: not due
    assert await closure.destroy_due(mes.store, CLOCK.now(), accounts=mes.accounts) == 0
    CLOCK.advance(days=RETENTION_DAYS)  # retain_until is today: kept until the end of the day
    assert await closure.destroy_due(mes.store, CLOCK.now(), accounts=mes.accounts) == 0
    assert (await c.get(f"/Patient/{ZOE}", headers=ZOE_H)).status_code == 200
    CLOCK.advance(days=1)
    assert await closure.destroy_due(mes.store, CLOCK.now(), accounts=mes.accounts) == 1
    assert scan(mes) == {}  # her account too: the closure linked it in the auth state
    assert (await c.get(f"/Patient/{ZOE}", headers=ZOE_H)).status_code == 404
    assert (await c.get("/DocumentReference/lea-cr", headers=MED)).status_code == 200
    destroyed = [json.loads(v.body) for v in await mes.store.search(Search("AuditEvent", ()), 10_000)
                 if b'"destroy"' in v.body]  # fmt: skip
    [event] = destroyed
    assert {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}["cause"] == closure.RETENTION


def test_retention_dates():
    now = CLOCK.now()
    shut = closure.closed(None, now, 10)
    assert shut.status == status.CLOSED and shut.retain_until == (now.date() + timedelta(days=10)).isoformat()
    assert not closure.is_due(shut, now.date() + timedelta(days=10))
    assert closure.is_due(shut, now.date() + timedelta(days=11))
    assert closure.is_due(closure.marked_for_deletion(shut, now), now.date())
    assert not closure.is_due(status.Space(status=status.CLOSED, retain_until="2020"), date(2030, 1, 1))
    assert closure.reopened(shut).status == status.CREATED and not closure.reopenable(closure.reopened(shut))


async def test_a_closed_space_leaks_nothing_by_the_other_channels(mes: Mes):
    """Batch answers, conditional update and delete matching, a Subscription's queued notification and the wording
    of the 404: after the closure, the médecin traitant learns nothing more than of a record that never existed."""
    c = mes.client
    subscription = {"resourceType": "Subscription", "status": "requested", "reason": "suivi",
                    "criteria": "Observation?subject=Patient/lea",
                    "channel": {"type": "rest-hook", "endpoint": "https://ehr.example/hook"}}  # fmt: skip
    assert (await c.post("/Subscription", json=subscription, headers=GP)).status_code == 201
    weight = {"resourceType": "Observation", "id": "lea-weight-2", "status": "final",
              "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}, "subject": {"reference": "Patient/lea"},
              "valueQuantity": {"value": 61, "unit": "kg", "system": "http://unitsofmeasure.org",
                                "code": "kg"}}  # fmt: skip
    assert (await c.put("/Observation/lea-weight-2", json=weight, headers=SYSTEM)).status_code == 201
    subscriptions = mes.app.state.context.observers[0]
    queued = [i for i in await mes.store.outbox_items() if i.payload.get("resource") == "Observation/lea-weight-2"]
    assert len(queued) == 1 and await subscriptions.admissible(queued[0])  # open: it would be sent
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "DocumentReference/lea-cr"}},
        {"request": {"method": "GET", "url": "Observation?subject=Patient/lea&_total=accurate"}}]}  # fmt: skip
    before = (await c.post("/", json=batch, headers=GP)).json()["entry"]
    assert before[0]["response"]["status"].startswith("200") and before[1]["resource"]["total"] >= 1

    assert (await mes.close(lea_token(), password=PASSWORD)).status_code == 200
    # the notification queued before the closure is not sent: the subscriber may no longer read it
    assert not await subscriptions.admissible(queued[0])
    after = (await c.post("/", json=batch, headers=GP)).json()["entry"]
    assert after[0]["response"]["status"].startswith("404") and after[1]["resource"]["total"] == 0
    assert "entry" not in after[1]["resource"]
    # conditional update and delete match nothing of hers: unknown, as if it never existed, or (a create)
    # refused as a deposit into a closed space
    changed = {**weight, "status": "amended"}
    r = await c.put("/Observation?_id=lea-weight-2", json=changed, headers=GP)
    assert r.status_code in (404, 422), r.text
    r = await c.delete("/Observation?_id=lea-weight-2", headers=GP)
    assert r.status_code in (200, 204), r.text
    kept = await c.get("/Observation/lea-weight-2", headers=lea_token())
    assert kept.status_code == 200 and kept.json()["status"] == "final" and kept.json()["meta"]["versionId"] == "1"
    # the 404 says what it says of a record that never existed
    closed = (await c.get("/DocumentReference/lea-cr", headers=GP)).json()
    never = (await c.get("/DocumentReference/never-was", headers=GP)).json()
    assert json.dumps(closed).replace("lea-cr", "X") == json.dumps(never).replace("never-was", "X")

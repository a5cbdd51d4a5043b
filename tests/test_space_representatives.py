"""Representatives and delegation (issue 12, docs/lifecycle.md), end to end on both stores: real accounts signed
in through the authorization server's forms, invitations by email through a real SMTP server (aiosmtpd), the
lifecycle clock moved instead of waiting.

A minor's legal representative from the registry until the 18th birthday, the second one invited (a third
refused), a tutor within the measure's period, an aidant invited, accepting, declining, expiring and revoked on a
live token; every transition traced; tokens acting for nobody else cost no query.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import httpx
import pytest
from aiosmtpd.controller import Controller
from test_auth_server import PASSWORD, REDIRECT, Server, answers, running, tokens_for
from test_delivery import Inbox, smtp_server

from fhir_server.policy import codes
from fhir_server.space import representatives as rep
from fhir_server.space import status
from fhir_server.space.clock import CLOCK, adult_on

SCOPE = "openid fhirUser offline_access user/*.cruds"
INS_MARIE, INS_HUGO, INS_PAUL = "280057512345671", "114057512345672", "160057512345673"
LEGAL_HIDDEN = {"system": codes.TRE_A07, "code": codes.INVISIBLE_REPRESENTANTS_LEGAUX}


def patient(id_: str, ins: str, birth: date, **extra: object) -> dict:
    name = [{"family": id_.capitalize(), "given": [id_]}]
    identifier = [{"system": codes.INS_NIR, "value": ins}]
    return {"resourceType": "Patient", "id": id_, "identifier": identifier, "name": name,
            "birthDate": birth.isoformat(), **extra}  # fmt: skip


def observation(id_: str, who: str) -> dict:
    return {"resourceType": "Observation", "id": id_, "status": "final", "code": {"text": "poids"},
            "subject": {"reference": f"Patient/{who}"}}  # fmt: skip


def document(id_: str, who: str, *labels: dict) -> dict:
    doc = {"resourceType": "DocumentReference", "id": id_, "status": "current",
           "subject": {"reference": f"Patient/{who}"},
           "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/{id_}"}}]}  # fmt: skip
    return {**doc, "securityLabel": [{"coding": [label]} for label in labels]} if labels else doc


@dataclass
class World:
    server: Server
    inbox: Inbox
    system: dict

    @property
    def http(self) -> httpx.AsyncClient:
        return self.server.http

    @property
    def app(self):
        return self.server.app

    async def put(self, resource: dict) -> None:
        r = await self.http.put(f"/{resource['resourceType']}/{resource['id']}", json=resource, headers=self.system)
        assert r.status_code in (200, 201), r.text

    async def login(self, username: str, password: str = PASSWORD) -> tuple[dict, dict]:
        """A token through the authorization server's forms: (Authorization header, claims)."""
        self.http.cookies.clear()  # a fresh browser: sign in again
        body = await tokens_for(self.server, answers(username, password), client_id="mes", scope=SCOPE)
        claims = self.server.auth.verify_access_token(body["access_token"], self.server_base)
        return {"Authorization": f"Bearer {body['access_token']}"}, claims

    @property
    def server_base(self) -> str:
        return self.app.state.settings.base_url

    async def invite(self, headers: dict, patient_id: str, email: str, **params: str) -> httpx.Response:
        parameters = [{"name": "email", "valueString": email}]
        parameters += [{"name": k, "valueString" if k == "name" else "valueCode": v} for k, v in params.items()]
        body = {"resourceType": "Parameters", "parameter": parameters}
        return await self.http.post(f"/Patient/{patient_id}/$invite-delegate", json=body, headers=headers)

    async def mailed_token(self, to: str) -> str:
        await self.app.state.deliverer.run_once()
        for rcpt, message, _ in reversed(self.inbox.messages):
            if rcpt == [to]:
                text = message.get_body(("plain",)).get_content()
                return re.search(r"/auth/space/invitations\?token=([A-Za-z0-9_\-]+)", text).group(1)
        raise AssertionError(f"no email to {to}")

    async def answer(self, action: str, **values: str) -> httpx.Response:
        return await self.http.post(f"/auth/space/invitations/{action}", json=values)

    async def events(self, patient_id: str) -> list[dict]:
        r = await self.http.get(f"/AuditEvent?entity=Patient/{patient_id}&_count=200", headers=self.system)
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", ())]


@pytest.fixture
def inbox_smtp() -> Iterator[tuple[Inbox, Controller]]:
    inbox = Inbox()
    for controller in smtp_server(inbox):
        yield inbox, controller


@contextlib.asynccontextmanager
async def world(store_url: str, inbox: Inbox, smtp: Controller) -> AsyncIterator[World]:
    settings = {"validation_processes": 0, "smtp_host": "127.0.0.1", "smtp_port": smtp.port}
    async with running(store_url, **settings) as server:
        await server.app.state.deliverer.stop()  # the test delivers (run_once)
        server.auth.add_client("mes", "public", redirect_uris=[REDIRECT], scope=SCOPE, name="Mon espace santé")
        system = server.auth.mint_access_token(client_id="feed", scope="system/*.cruds", lifetime=24 * 3600)
        yield World(server, inbox, {"Authorization": f"Bearer {system}"})
    CLOCK.reset()


@pytest.fixture
async def w(store_url: str, inbox_smtp) -> AsyncIterator[World]:
    async with world(store_url, *inbox_smtp) as it:
        yield it


async def minor_of_marie(w: World) -> date:
    """Marie (an insured adult with an account) and Hugo, her ten-year-old dependant, as the registry gives them;
    the registry makes Marie Hugo's legal representative (twice: idempotent)."""
    today = CLOCK.today()
    hugo_birth = today.replace(year=today.year - 10) - timedelta(days=3)
    await w.put(patient("marie", INS_MARIE, date(1980, 5, 1)))
    ouvrant = {"url": status.OUVRANT_DROIT, "valueIdentifier": {"system": codes.INS_NIR, "value": INS_MARIE}}
    hugo = patient("hugo", INS_HUGO, hugo_birth, extension=[ouvrant])
    await w.put(hugo)
    store = w.app.state.context.store
    for _ in range(2):
        await store.transact(lambda tx: rep.registry_representative(tx, hugo, CLOCK.now()))
    w.server.auth.add_user("marie", PASSWORD, fhir_user="Patient/marie")
    return hugo_birth


# --- minors ----------------------------------------------------------------------------------------------------


async def test_a_minors_legal_representative_until_the_18th_birthday(w: World):
    hugo_birth = await minor_of_marie(w)
    r = await w.http.get("/RelatedPerson?patient=Patient/hugo", headers=w.system)
    (found,) = [e["resource"] for e in r.json()["entry"]]  # idempotent: one
    assert found["relationship"][0]["coding"][0]["code"] == "RESPRSN" and found["active"] is True
    assert found["identifier"] == [{"use": "official", "system": codes.INS_NIR, "value": INS_MARIE}]
    assert found["name"] == [{"text": "marie Marie"}]
    assert found["period"]["end"] == rep.coming_of_age(hugo_birth)
    await w.put(document("hugo-cr", "hugo"))
    await w.put(document("hugo-hidden", "hugo", LEGAL_HIDDEN))
    await w.put(observation("marie-weight", "marie"))

    marie, claims = await w.login("marie")
    assert claims["managed_patients"] == ["marie", "hugo"] and claims["represented"] == ["hugo"]
    assert (await w.http.get("/Patient/hugo", headers=marie)).status_code == 200
    r = await w.http.get("/DocumentReference?subject=Patient/hugo", headers=marie)
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["hugo-cr"]  # INVISIBLE_REPRESENTANTS_LEGAUX hidden
    assert (await w.http.get("/DocumentReference/hugo-hidden", headers=marie)).status_code == 404
    # a representative's write is traced with the representative as the agent
    r = await w.http.put("/Observation/hugo-weight", json=observation("hugo-weight", "hugo"), headers=marie)
    assert r.status_code == 201, r.text
    writes = [
        e for e in await w.events("hugo")
        if e["subtype"][0]["code"] == "update" and "Observation/hugo-weight/_history/1" in str(e["entity"])
    ]  # fmt: skip
    assert len(writes) == 1 and writes[0]["agent"][0]["who"] == {"reference": "Patient/marie"}

    # the 18th birthday: the same token no longer reaches Hugo, Marie's own record still answers
    CLOCK.advance(days=(adult_on(hugo_birth) - CLOCK.today()).days + 1)
    assert (await w.http.get("/Patient/hugo", headers=marie)).status_code == 404
    assert (await w.http.get("/Observation/hugo-weight", headers=marie)).status_code == 404
    assert (await w.http.get("/Observation/marie-weight", headers=marie)).status_code == 200
    _, claims = await w.login("marie")
    assert claims["managed_patients"] == ["marie"] and "represented" not in claims


async def test_the_second_legal_representative_is_invited_by_the_first_and_a_third_is_refused(w: World):
    await minor_of_marie(w)
    marie, _ = await w.login("marie")
    r = await w.invite(marie, "hugo", "jean@example.org", name="Jean", kind=rep.LEGAL)
    assert r.status_code == 201, r.text
    pending = r.json()
    assert pending["active"] is False and pending["relationship"][0]["coding"][0]["code"] == "RESPRSN"
    token = await w.mailed_token("jean@example.org")
    r = await w.answer("accept", token=token, username="jean", password="jean's secret")
    assert r.status_code == 200, r.text
    jean, claims = await w.login("jean", "jean's secret")
    assert claims["fhirUser"] == f"RelatedPerson/{pending['id']}" and claims["managed_patients"] == ["hugo"]
    assert (await w.http.get("/Patient/hugo", headers=jean)).status_code == 200
    assert (await w.http.get("/Patient/marie", headers=jean)).status_code == 404
    # two legal representatives in place: a third invitation is refused, by either of them
    for inviter in (marie, jean):
        r = await w.invite(inviter, "hugo", "tiers@example.org", kind=rep.LEGAL)
        assert r.status_code == 422 and "at most 2" in r.text
    # the person's own account cannot make someone a legal representative of themselves
    r = await w.invite(marie, "marie", "x@example.org", kind=rep.LEGAL)
    assert r.status_code == 403


# --- protected adults ----------------------------------------------------------------------------------------------


async def test_a_tutor_manages_the_space_while_the_measure_runs(w: World):
    await w.put(patient("paul", INS_PAUL, date(1960, 5, 1)))
    await w.put(observation("paul-weight", "paul"))
    now = CLOCK.now()
    measure = rep.related_person(
        "paul", rep.TUTOR, rep.MANAGE, state=rep.ACCEPTED, active=True, start=status.instant(now + timedelta(days=10)),
        end=status.instant(now + timedelta(days=40)), identifiers=[{"system": rep.ACCOUNT, "value": "tuteur"}],
    )  # fmt: skip
    r = await w.http.post("/RelatedPerson", json=measure, headers=w.system)  # the court's feed
    assert r.status_code == 201, r.text
    w.server.auth.add_user("tuteur", PASSWORD, fhir_user=f"RelatedPerson/{r.json()['id']}")
    before, claims = await w.login("tuteur")
    assert claims["managed_patients"] == []
    assert (await w.http.get("/Patient/paul", headers=before)).status_code == 404
    CLOCK.advance(days=11)
    within, claims = await w.login("tuteur")
    assert claims["managed_patients"] == ["paul"]
    assert (await w.http.get("/Observation/paul-weight", headers=within)).status_code == 200
    r = await w.http.put("/Observation/paul-bp", json=observation("paul-bp", "paul"), headers=within)
    assert r.status_code == 201, r.text
    CLOCK.advance(days=30)  # the measure ended: the same token reaches nothing
    assert (await w.http.get("/Observation/paul-weight", headers=within)).status_code == 404


# --- delegation to an aidant ------------------------------------------------------------------------------------------


async def adult_paul(w: World) -> dict:
    await w.put(patient("paul", INS_PAUL, date(1960, 5, 1)))
    await w.put(observation("paul-weight", "paul"))
    w.server.auth.add_user("paul", PASSWORD, fhir_user="Patient/paul")
    paul, _ = await w.login("paul")
    return paul


async def test_an_aidant_invited_accepts_reads_cannot_write_and_is_revoked_on_a_live_token(w: World):
    paul = await adult_paul(w)
    r = await w.invite(paul, "paul", "sophie@example.org", name="Sophie", rights=rep.READ)
    assert r.status_code == 201, r.text
    invitation = r.json()
    assert invitation["active"] is False and invitation["relationship"][0]["coding"][0]["code"] == "CAREGIVER"
    token = await w.mailed_token("sophie@example.org")
    (_, message, _) = w.inbox.messages[-1]
    assert "paul" not in message.get_body(("plain",)).get_content().lower()  # no name of the person, no health data
    page = await w.http.get("/auth/space/invitations", params={"token": token})
    assert page.status_code == 200 and "aidant(e)" in page.text and "consulter" in page.text
    r = await w.answer("accept", token=token, username="sophie", password="sophie's secret")
    assert r.status_code == 200, r.text
    sophie, claims = await w.login("sophie", "sophie's secret")
    assert claims["managed_patients"] == ["paul"] and claims["represented"] == ["paul"]
    assert (await w.http.get("/Observation/paul-weight", headers=sophie)).status_code == 200
    # read-only rights: no write into Paul's record
    r = await w.http.put("/Observation/paul-bp", json=observation("paul-bp", "paul"), headers=sophie)
    assert r.status_code == 403, r.text
    changed = {**observation("paul-weight", "paul"), "status": "amended"}
    assert (await w.http.put("/Observation/paul-weight", json=changed, headers=sophie)).status_code == 403
    # a delegate does not invite nor revoke
    assert (await w.invite(sophie, "paul", "autre@example.org")).status_code == 403
    assert (await w.http.post(f"/RelatedPerson/{invitation['id']}/$revoke", headers=sophie)).status_code == 403
    # the person revokes: Sophie's next request with the same, still valid token fails
    r = await w.http.post(f"/RelatedPerson/{invitation['id']}/$revoke", headers=paul)
    assert r.status_code == 200 and r.json()["active"] is False, r.text
    assert (await w.http.get("/Observation/paul-weight", headers=sophie)).status_code == 404
    for path in ("/Observation/paul-weight/_history/1", "/Observation/paul-weight/_history", "/Patient/paul",
                 "/Patient/paul/$everything"):  # fmt: skip
        assert (await w.http.get(path, headers=sophie)).status_code in (403, 404), path
    for query in (
        "/Observation?subject=Patient/paul&_summary=count",
        "/Patient?_id=paul&_revinclude=Observation:subject",
        "/Observation?subject:Patient.gender=male,female,other,unknown&_total=accurate",
        "/Patient?_has:Observation:subject:status=final",
    ):
        r = await w.http.get(query, headers=sophie)
        assert r.status_code in (200, 403) and not r.json().get("total") and not r.json().get("entry"), query
    # every transition is traced, naming Paul
    described = [e.get("outcomeDesc") for e in await w.events("paul")]
    for text in ("invitation (delegate, read) sent", "invitation accepted", "representation revoked"):
        assert text in described
    accepted = next(e for e in await w.events("paul") if e.get("outcomeDesc") == "invitation accepted")
    assert accepted["agent"][0]["who"] == {"reference": f"RelatedPerson/{invitation['id']}"}


async def test_a_manage_delegate_writes_and_a_revocation_by_update_also_holds(w: World):
    paul = await adult_paul(w)
    w.server.auth.add_user("claire", PASSWORD, fhir_user="Patient/claire")  # an existing account
    r = await w.invite(paul, "paul", "claire@example.org", rights=rep.MANAGE)
    token = await w.mailed_token("claire@example.org")
    r = await w.answer("accept", token=token, username="claire", password="wrong password")
    assert r.status_code == 401
    r = await w.answer("accept", token=token, username="claire", password=PASSWORD)
    assert r.status_code == 200, r.text
    claire, claims = await w.login("claire")
    assert claims["managed_patients"] == ["claire", "paul"]
    r = await w.http.put("/Observation/paul-bp", json=observation("paul-bp", "paul"), headers=claire)
    assert r.status_code == 201, r.text
    related = (await w.http.get("/RelatedPerson?patient=Patient/paul", headers=paul)).json()["entry"][0]["resource"]
    # nobody but the server grants access through a RelatedPerson: not the person, not the delegate
    widened = {**related, "period": {"start": "2000-01-01"}}
    assert (await w.http.put(f"/RelatedPerson/{related['id']}", json=widened, headers=paul)).status_code == 403
    forged = rep.related_person("paul", rep.DELEGATE, rep.MANAGE, state=rep.ACCEPTED, active=True,
                                identifiers=[{"system": rep.ACCOUNT, "value": "mallory"}])  # fmt: skip
    assert (await w.http.post("/RelatedPerson", json=forged, headers=paul)).status_code == 403
    assert (await w.http.delete(f"/RelatedPerson/{related['id']}", headers=claire)).status_code == 403
    # Claire subscribes to Paul's measures: notified while she represents him
    subscription = {"resourceType": "Subscription", "status": "requested", "reason": "Paul's measures",
                    "criteria": "Observation?subject=Patient/paul",
                    "channel": {"type": "email", "endpoint": "mailto:claire@example.org"}}  # fmt: skip
    assert (await w.http.post("/Subscription", json=subscription, headers=claire)).status_code == 201, r.text
    assert await notified(w, "claire@example.org", observation("paul-hr", "paul"))
    # ending it by an update (active false) is the person's right
    r = await w.http.put(f"/RelatedPerson/{related['id']}", json={**related, "active": False}, headers=paul)
    assert r.status_code == 200, r.text
    assert (await w.http.get("/Observation/paul-bp", headers=claire)).status_code == 404
    # and her Subscription, recorded while she represented him, notifies her of nothing more
    assert not await notified(w, "claire@example.org", observation("paul-temp", "paul"))


async def notified(w: World, address: str, resource: dict) -> bool:
    """Whether writing ``resource`` (as the feed) sends ``address`` a Subscription's email."""
    w.inbox.messages.clear()
    await w.put(resource)
    await w.app.state.deliverer.run_once()
    return any(rcpt == [address] for rcpt, _, _ in w.inbox.messages)


async def test_declined_used_and_expired_invitations_get_the_same_refusal(w: World):
    paul = await adult_paul(w)
    await w.invite(paul, "paul", "a@example.org")
    declined = await w.mailed_token("a@example.org")
    r = await w.answer("decline", token=declined, reason="Pas disponible")
    assert r.status_code == 200, r.text
    r = await w.http.get("/RelatedPerson?patient=Patient/paul", headers=paul)
    (related,) = [e["resource"] for e in r.json()["entry"]]
    assert related["active"] is False and rep._extension(related)["status"] == rep.DECLINED
    assert rep._extension(related)["statusReason"] == "Pas disponible"
    assert "invitation declined" in [e.get("outcomeDesc") for e in await w.events("paul")]

    await w.invite(paul, "paul", "b@example.org")
    used = await w.mailed_token("b@example.org")
    assert (await w.answer("accept", token=used, username="bea", password="bea's secret")).status_code == 200
    await w.invite(paul, "paul", "c@example.org")
    expired = await w.mailed_token("c@example.org")
    CLOCK.advance(days=w.app.state.settings.invitation_days + 1)
    refusals = [
        await w.answer("accept", token=declined, username="x1", password="long enough"),
        await w.answer("accept", token=used, username="x2", password="long enough"),
        await w.answer("accept", token=expired, username="x3", password="long enough"),
        await w.answer("decline", token=expired),
        await w.answer("accept", token="not-a-token", username="x4", password="long enough"),
    ]
    assert {r.status_code for r in refusals} == {400} and len({r.text for r in refusals}) == 1
    assert (await w.http.get("/auth/space/invitations", params={"token": expired})).status_code == 400
    assert w.server.auth.user("x1") is None and w.server.auth.user("x3") is None  # no account made


async def test_tokens_acting_for_nobody_else_cost_no_query(w: World, monkeypatch: pytest.MonkeyPatch):
    await minor_of_marie(w)
    await w.put(patient("anna", "290057512345674", date(1990, 1, 1)))
    w.server.auth.add_user("anna", PASSWORD, fhir_user="Patient/anna")
    calls: list[int] = []
    real = rep.held_by

    async def counted(*args, **kwargs):
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(rep, "held_by", counted)
    anna, claims = await w.login("anna")  # a patient who represents nobody
    assert claims["managed_patients"] == ["anna"] and "represented" not in claims
    calls.clear()
    for headers in (anna, w.system):
        for _ in range(3):
            assert (await w.http.get("/Patient/anna", headers=headers)).status_code == 200
    assert calls == []  # a patient's own token, a system token: nothing to check
    marie, _ = await w.login("marie")
    calls.clear()
    for _ in range(3):
        assert (await w.http.get("/Patient/hugo", headers=marie)).status_code == 200
    assert len(calls) == 3  # one indexed query per request of a representative's token, never cached

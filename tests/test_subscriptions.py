"""R4 Subscriptions (http://hl7.org/fhir/R4/subscription.html; fhir_server/notify/subscriptions.py) on both stores.

What a client may write (criteria and channel checked, status set by the server), what a write enqueues (one
outbox item per matching subscription, nothing for a non-matching write or a deletion, nothing after
``end``), confinement (a subscriber hears only of what its token may read; its criteria cannot widen that),
then end to end: rest-hooks to a local HTTP receiver and email to a local SMTP server (aiosmtpd), the
``Deliverer`` driven by ``run_once``, and ``Subscription.status`` following the deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from conftest import FHIR_BASE, free_port
from test_access_control import StandInVerifier, token

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.errors import FhirError
from fhir_server.notify import subscriptions as subs
from fhir_server.notify.outbox import EMAIL, REST_HOOK, OutboxItem
from fhir_server.security.access import SUBSCRIPTION_OWNER

NDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ans-examples" / "nde" / "Subscription-sub1.json"
LOINC = "http://loinc.org"
HOUR = 3600 * 1_000_000
SECRET_HEADER = "Authorization: Bearer hook-secret"


def subscription(criteria: str, channel: dict | None = None, **more: object) -> dict:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": channel or {"type": "rest-hook", "endpoint": "https://hooks.example/fhir"},
        **more,
    }


def hook(endpoint: str = "https://hooks.example/fhir", **more: object) -> dict:
    return {"type": "rest-hook", "endpoint": endpoint, **more}


def observation(code: str, patient: str | None = None, text: str = "x") -> dict:
    obs: dict = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": LOINC, "code": code}],
                                                                              "text": text}}  # fmt: skip
    if patient:
        obs["subject"] = {"reference": f"Patient/{patient}"}
    return obs


@contextlib.asynccontextmanager
async def server(store_url: str, **settings: object) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    """The app (auth off) with its outbox worker stopped: tests drive it with ``run_once``."""
    settings = {"auth": False, "load_definitions": False, "validation_processes": 0, **settings}
    app = create_app(Settings(store=store_url, **settings))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        await app.state.deliverer.stop()
        yield c, app


async def outbox(app) -> list[OutboxItem]:
    return await app.state.context.store.outbox_items()


async def created(c: httpx.AsyncClient, resource: dict, headers: dict | None = None) -> dict:
    r = await c.post(f"/{resource['resourceType']}", json=resource, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def engine(app) -> subs.Subscriptions:
    return next(o for o in app.state.context.observers if isinstance(o, subs.Subscriptions))


# --- what a client may write -------------------------------------------------------------------------------


async def test_create_checks_criteria_and_channel(store_url):
    async with server(store_url) as (c, _):
        made = await created(c, subscription(f"Observation?code={LOINC}|1234-5"))
        assert made["status"] == "active"  # requested → active: the server has set it up
        refused = {
            "Observation?nope=1": ("invalid", "Unknown search parameter 'nope'"),
            "Nope?code=1": ("invalid", "'Nope' is not a resource type"),
            "/Observation?code=1": ("invalid", "is not a resource type"),
            f"{FHIR_BASE}/Observation?code=1": ("invalid", "is not a resource type"),
            "Observation?code=1&_count=5": ("invalid", "_count is not a search criterion"),
            "Observation?date=yesterday": ("invalid", "date"),
            "Subscription?status=active": ("not-supported", "Subscriptions cannot watch Subscriptions"),
        }
        for criteria, (code, words) in refused.items():
            r = await c.post("/Subscription", json=subscription(criteria))
            assert r.status_code == 400, (criteria, r.text)
            issue = r.json()["issue"][0]
            assert issue["code"] == code and words in issue["diagnostics"], (criteria, issue)
            assert issue["expression"] == ["Subscription.criteria"]
        channels = [
            ({"type": "websocket", "endpoint": "wss://x.example/ws"}, "not supported", "channel.type"),
            ({"type": "sms", "endpoint": "tel:+33600000000"}, "not supported", "channel.type"),
            ({"type": "message", "endpoint": "https://x.example/msg"}, "not supported", "channel.type"),
            ({"type": "rest-hook", "endpoint": "/relative/hook"}, "absolute http", "channel.endpoint"),
            ({"type": "rest-hook", "endpoint": "ftp://x.example/hook"}, "absolute http", "channel.endpoint"),
            ({"type": "rest-hook"}, "absolute http", "channel.endpoint"),
            ({"type": "rest-hook", "endpoint": "https://u:p@x.example/h"}, "no credentials", "channel.endpoint"),
            ({"type": "rest-hook", "endpoint": "https://x.example/h", "payload": "application/fhir+xml"},
             "not supported", "channel.payload"),
            ({"type": "rest-hook", "endpoint": "https://x.example/h", "header": ["no colon"]}, "Name: value",
             "channel.header[0]"),
            ({"type": "rest-hook", "endpoint": "https://x.example/h", "header": ["A: 1", "Host: evil.example"]},
             "set by the server", "channel.header[1]"),
            ({"type": "email", "endpoint": "pierre.durand@aphp.fr"}, "mailto:", "channel.endpoint"),
            ({"type": "email", "endpoint": "mailto:a@b.example,c@d.example"}, "mailto:", "channel.endpoint"),
            ({"type": "email", "endpoint": "mailto:a@b.example", "payload": "application/fhir+json"},
             "no resource content", "channel.payload"),
        ]  # fmt: skip
        for channel, words, where in channels:
            r = await c.post("/Subscription", json=subscription("Observation", channel))
            assert r.status_code == 400, (channel, r.text)
            issue = r.json()["issue"][0]
            assert words in issue["diagnostics"] and issue["expression"] == [f"Subscription.{where}"], (channel, issue)
        # Only the server sets active and error; a client asks (requested) or turns off.
        r = await c.post("/Subscription", json=subscription("Observation", status="error"))
        assert r.status_code == 400 and "requested" in r.json()["issue"][0]["diagnostics"]
        assert (await created(c, subscription("Observation", status="off")))["status"] == "off"
        assert (await created(c, subscription("Observation", end="2020-02-07T13:28:17-05:00")))["status"] == "off"
        future = await created(c, subscription("Observation", end="2999-01-01T00:00:00Z"))
        assert future["status"] == "active"
        ok = {"type": "email", "endpoint": "mailto:pierre.durand@aphp.fr", "payload": "text/plain"}
        assert (await created(c, subscription("Observation", ok)))["status"] == "active"
        # Every write path is held to the same rules: update, PATCH, transaction entries.
        r = await c.put(f"/Subscription/{made['id']}", json={**made, "criteria": "Observation?nope=1"})
        assert r.status_code == 400 and "nope" in r.text
        patch = [{"op": "replace", "path": "/channel/type", "value": "websocket"}]
        r = await c.patch(
            f"/Subscription/{made['id']}", json=patch, headers={"Content-Type": "application/json-patch+json"}
        )
        assert r.status_code in (400, 422) and "websocket" in r.text
        patch = [
            {"op": "replace", "path": "/status", "value": "requested"},
            {"op": "add", "path": "/end", "value": "2001-01-01T00:00:00Z"},
        ]
        r = await c.patch(
            f"/Subscription/{made['id']}", json=patch, headers={"Content-Type": "application/json-patch+json"}
        )
        assert r.status_code == 200 and r.json()["status"] == "off"
        entry = {"resource": subscription("Observation?nope=2"), "request": {"method": "POST", "url": "Subscription"}}
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        r = await c.post("/", json=bundle)
        assert r.status_code == 400 and "nope" in r.text


async def test_the_nde_example(store_url):
    """The ANS NdE Subscription (email, extensions, contained resources) as published: its own criteria
    ``CommunicationRequest?event-type=SOR`` (the NdE guide's SearchParameter, which the server carries) run, and a
    discharge declared as the NdE guide shapes it notifies the subscriber."""
    nde = json.loads(NDE.read_text())
    declaration = json.loads((NDE.parent / "CommunicationRequest-com2.json").read_text())
    async with server(store_url) as (c, app):
        # Its end (2020) has passed: stored off.
        r = await c.post("/Subscription", json={k: v for k, v in nde.items() if k != "id"})
        assert r.status_code == 201 and r.json()["status"] == "off"
        current = {k: v for k, v in nde.items() if k != "end"}
        made = (await c.put("/Subscription/sub1", json=current)).json()
        assert made["status"] == "active" and made["extension"] == nde["extension"]
        assert made["criteria"] == "CommunicationRequest?event-type=SOR"
        await created(c, {k: v for k, v in declaration.items() if k != "id"})
        items = await outbox(app)
        assert [(i.channel, i.payload["subscription"]) for i in items] == [("email", "sub1")]
        assert items[0].payload["to"] == "pierre.durand@aphp.fr"
        other = json.loads(json.dumps(declaration).replace('"SOR"', '"ADM"'))
        await created(c, {k: v for k, v in other.items() if k != "id"})
        assert len(await outbox(app)) == 1  # an admission is not a discharge


def test_criteria_parser_without_the_app():
    search = subs.parse_criteria("Observation?code=http://loinc.org|1&subject=Patient/p1")
    assert search.type == "Observation" and len(search.where) == 2
    assert subs.parse_criteria("Patient").where == ()
    with pytest.raises(FhirError) as caught:
        subs.parse_criteria("Observation?code:exact=1")
    assert caught.value.status == 400 and caught.value.issues[0].expression == ("Subscription.criteria",)
    assert subs.email_address("mailto:pierre.durand%40aphp.fr") == "pierre.durand@aphp.fr"
    assert subs.email_address("mailto:") is None


# --- what a write enqueues ---------------------------------------------------------------------------------


async def test_matching_writes_enqueue_one_item_each(store_url):
    async with server(store_url) as (c, app):
        code = f"Observation?code={LOINC}|1234-5"
        ping = await created(c, subscription(code, hook(header=["Authorization: Bearer s3cret"])))
        full_channel = hook("https://hooks.example/fhir?tenant=7", payload="application/fhir+json")
        full = await created(c, subscription(f"{code}&status=final", full_channel))
        mail = await created(
            c, subscription("Observation?status=amended", {"type": "email", "endpoint": "mailto:dr@x.example"})
        )
        await created(c, subscription(f"Observation?code={LOINC}|1234-5", status="off"))
        await created(c, subscription("Patient?name=nobody"))

        await created(c, observation("999"))  # matches nothing
        assert await outbox(app) == []
        obs = await created(c, observation("1234-5", text="Glycémie 2,1 g/L"))
        items = {i.payload["subscription"]: i for i in await outbox(app)}
        assert set(items) == {ping["id"], full["id"]}  # one item per matching subscription; none for off
        empty = items[ping["id"]]
        assert empty.channel == REST_HOOK and empty.state == "pending" and empty.attempts == 0
        headers = ["Authorization: Bearer s3cret"]
        assert empty.payload == {"url": "https://hooks.example/fhir", "headers": headers, "body": None,
                                 "subscription": ping["id"], "resource": f"Observation/{obs['id']}"}  # fmt: skip
        put = items[full["id"]].payload
        assert put["method"] == "PUT" and put["url"] == f"https://hooks.example/fhir/Observation/{obs['id']}?tenant=7"
        assert json.loads(put["body"]) == obs and put["content_type"] == "application/fhir+json"

        # An update that matches notifies again; an email names the resource, never its content.
        amended = {**obs, "status": "amended"}
        assert (await c.put(f"/Observation/{obs['id']}", json=amended)).status_code == 200
        mails = [i for i in await outbox(app) if i.channel == EMAIL]
        assert len(mails) == 1 and mails[0].payload["to"] == "dr@x.example"
        assert mails[0].payload["subscription"] == mail["id"]
        text = mails[0].payload["text"] + mails[0].payload["subject"]
        assert f"Observation/{obs['id']}" in text and "mise à jour" in text
        assert "Glycémie" not in text and "1234-5" not in text
        assert len(await outbox(app)) == 4  # ping and mail; not full (status=final no longer matches)

        # A deletion is no notification (R4: the criteria apply to the new content, a deletion has none).
        before = len(await outbox(app))
        assert (await c.delete(f"/Observation/{obs['id']}")).status_code in (200, 204)
        assert len(await outbox(app)) == before

        # Turning a subscription off, or deleting it, stops it at once in this process.
        off = {**(await c.get(f"/Subscription/{ping['id']}")).json(), "status": "off"}
        assert (await c.put(f"/Subscription/{ping['id']}", json=off)).status_code == 200
        assert (await c.delete(f"/Subscription/{full['id']}")).status_code in (200, 204)
        await created(c, observation("1234-5"))
        assert len(await outbox(app)) == before


async def test_a_rolled_back_write_enqueues_nothing(store_url):
    async with server(store_url) as (c, app):
        await created(c, subscription(f"Observation?code={LOINC}|1234-5"))
        assert (await c.put("/Patient/p", json={"resourceType": "Patient", "id": "p"})).status_code == 201
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": observation("1234-5"), "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Patient", "id": "p"},  # fails after the match: version 1 is current
             "request": {"method": "PUT", "url": "Patient/p", "ifMatch": 'W/"9"'}},
        ]}  # fmt: skip
        assert (await c.post("/", json=bundle)).status_code == 412
        assert await outbox(app) == []
        bundle["entry"] = bundle["entry"][:1] * 2
        assert (await c.post("/", json=bundle)).status_code == 200
        assert len(await outbox(app)) == 2


async def test_subscriptions_of_other_processes_are_seen_within_the_reload_delay(store_url):
    async with server(store_url) as (c, app):
        elsewhere = subscription("Observation")  # written by "another process": straight into the store
        store = app.state.context.store
        await created(c, observation("1"))  # the engine has loaded its (empty) list
        from fhir_server.interactions import crud

        await store.transact(lambda tx: crud.create_in(tx, "Subscription", elsewhere, id_="other"))
        ticks = engine(app)
        now = [ticks.monotonic()]
        ticks.monotonic = lambda: now[0]
        ticks._settling_until = 0.0
        await created(c, observation("2"))
        assert await outbox(app) == []  # not yet
        now[0] += subs.RELOAD_SECONDS + 0.1
        await created(c, observation("3"))
        assert [i.payload["subscription"] for i in await outbox(app)] == ["other"]


async def test_end_turns_a_subscription_off(store_url):
    async with server(store_url) as (c, app):
        sub = await created(c, subscription("Observation", end="2999-01-01T00:00:00Z"))
        await created(c, observation("1"))
        assert len(await outbox(app)) == 1
        engine(app).clock = lambda: subs.subscription_end(sub) + 1  # the end has passed
        await created(c, observation("2"))
        assert len(await outbox(app)) == 1  # nothing after the end
        assert (await c.get(f"/Subscription/{sub['id']}")).json()["status"] == "off"


# --- confinement -----------------------------------------------------------------------------------------


SEED = [
    {"resourceType": "Patient", "id": "anne", "name": [{"family": "Martin"}]},
    {"resourceType": "Patient", "id": "bruno", "name": [{"family": "Bernard"}]},
]
ANNE = {"patient": "anne"}


@contextlib.asynccontextmanager
async def secured(store_url: str, **settings: object) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    async with server(store_url, **settings) as (c, app):
        for resource in SEED:
            assert (await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)).status_code == 201
        app.state.auth = StandInVerifier()
        yield c, app


async def test_a_subscriber_hears_only_of_what_its_token_may_read(store_url):
    async with secured(store_url) as (c, app):
        anne = token("patient/*.cruds", **ANNE)
        system = token("system/*.cruds")
        everything = await created(c, subscription("Observation"), anne)
        widened = await created(c, subscription("Observation?subject=Patient/bruno"), anne)
        chained = await created(c, subscription("Observation?subject:Patient.name=Bernard"), anne)
        probe = await created(c, subscription("Patient?_has:Observation:subject:code=1234-5"), anne)
        granular = await created(
            c, subscription("Observation"), token("patient/Observation.r?code=1 patient/Subscription.c", **ANNE)
        )
        # The recorded subscriber: the token's access claims, never the token (no jti, no expiry).
        claims = json.loads(
            next(e["valueString"] for e in everything["extension"] if e["url"] == subs.SUBSCRIBER_EXTENSION)
        )
        assert claims == {"client_id": "app", "sub": "user", "scope": "patient/*.cruds", "patient": "anne"}
        assert [t["system"] for t in everything["meta"]["tag"]] == [SUBSCRIPTION_OWNER]

        await created(c, observation("1234-5", "bruno"), system)
        assert await outbox(app) == []  # bruno's: none of anne's subscriptions, whatever their criteria
        mine = await created(c, observation("1234-5", "anne"), system)
        items = await outbox(app)
        assert [i.payload["subscription"] for i in items] == [everything["id"]]
        assert mine["status"] == "final"  # widened, chained, probe (a Patient criteria) and granular: nothing
        # The _has probe fires for anne's record (her Observation matches), never for bruno's.
        for pid, family in (("bruno", "Bernard"), ("anne", "Martin")):
            r = await c.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "name": [{"family": family}],
                                                     "gender": "other"}, headers=system)  # fmt: skip
            assert r.status_code == 200
        fired = [i.payload["subscription"] for i in await outbox(app)]
        assert fired == [everything["id"], probe["id"]]
        assert {widened["id"], chained["id"], granular["id"]}.isdisjoint(fired)


async def test_access_is_checked_again_when_the_notification_leaves(store_url, receiver):
    """Read rights at delivery time: an Observation moved out of the subscriber's record between the write and
    the delivery is not announced; a Subscription switched off meanwhile sends nothing."""
    async with secured(store_url) as (c, app):
        anne = token("patient/*.cruds", **ANNE)
        system = token("system/*.cruds")
        await created(c, subscription("Observation", hook(receiver.url, payload="application/fhir+json")), anne)
        moved = await created(c, observation("1", "anne"), system)
        kept = await created(c, observation("2", "anne"), system)
        assert len(await outbox(app)) == 2
        moved["subject"] = {"reference": "Patient/bruno"}  # now Bruno's: Anne's token may not read it
        assert (await c.put(f"/Observation/{moved['id']}", json=moved, headers=system)).status_code == 200
        assert await app.state.deliverer.run_once() == 2
        assert await outbox(app) == []  # the withheld one is removed, not retried
        assert [r.target for r in receiver.requests] == [f"/hook/Observation/{kept['id']}"]


async def test_recorded_claims_cannot_be_forged_and_subscriptions_are_their_owners(store_url):
    async with secured(store_url) as (c, app):
        anne = token("patient/*.cruds", **ANNE)
        bruno = token("patient/*.cruds", patient="bruno", sub="bruno-user")
        forged = subscription("Observation", extension=[{"url": subs.SUBSCRIBER_EXTENSION,
                                                         "valueString": json.dumps({"scope": "system/*.rs"})}],
                              meta={"tag": [{"system": SUBSCRIPTION_OWNER, "code": "someone-else"}]})  # fmt: skip
        made = await created(c, forged, anne)
        recorded = [e for e in made["extension"] if e["url"] == subs.SUBSCRIBER_EXTENSION]
        assert len(recorded) == 1 and json.loads(recorded[0]["valueString"])["scope"] == "patient/*.cruds"
        assert len(made["meta"]["tag"]) == 1 and made["meta"]["tag"][0]["code"] != "someone-else"
        await created(c, observation("1", "bruno"), token("system/*.cruds"))
        assert await outbox(app) == []

        # Another patient's token neither reads, finds, changes nor deletes it.
        assert (await c.get(f"/Subscription/{made['id']}", headers=bruno)).status_code == 404
        assert (await c.get("/Subscription", headers=bruno)).json().get("total", 0) == 0
        assert (await c.put(f"/Subscription/{made['id']}", json=made, headers=bruno)).status_code == 404
        assert (await c.delete(f"/Subscription/{made['id']}", headers=bruno)).status_code == 404
        assert (await c.get("/_history", headers=token("user/*.rs"))).status_code == 403  # no system history
        # Its owner does; a system token sees every Subscription.
        assert (await c.get(f"/Subscription/{made['id']}", headers=anne)).status_code == 200
        assert (await c.get("/Subscription", headers=anne)).json()["total"] == 1
        assert (await c.get("/Subscription", headers=token("system/*.rs"))).json()["total"] == 1
        # Removing its owner tag would put it out of the owner's reach: refused.
        meta_delete = {
            "resourceType": "Parameters",
            "parameter": [{"name": "meta", "valueMeta": {"tag": made["meta"]["tag"]}}],
        }
        r = await c.post(f"/Subscription/{made['id']}/$meta-delete", json=meta_delete, headers=anne)
        assert r.status_code == 403


# --- end to end: rest-hooks ------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server recording each request, answering the next of ``statuses`` (then 200)."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, target, headers, body))
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    listening = await asyncio.start_server(hooks.handle, "127.0.0.1", 0)
    hooks.port = listening.sockets[0].getsockname()[1]
    try:
        yield hooks
    finally:
        listening.close()
        await listening.wait_closed()


async def test_rest_hook_end_to_end(store_url, receiver):
    async with server(store_url) as (c, app):
        await created(c, subscription(f"Observation?code={LOINC}|1", hook(receiver.url, header=[SECRET_HEADER])))
        await created(
            c, subscription(f"Observation?code={LOINC}|2", hook(receiver.url, payload="application/fhir+json"))
        )
        ping = await created(c, observation("1"))
        full = await created(c, observation("2"))
        assert await app.state.deliverer.run_once() == 2
        assert await outbox(app) == []  # delivered: gone from the outbox
        by_target = {r.target: r for r in receiver.requests}
        empty = by_target["/hook"]
        assert empty.method == "POST" and empty.body == b"" and "content-type" not in empty.headers
        assert empty.headers["authorization"] == "Bearer hook-secret"
        update = by_target[f"/hook/Observation/{full['id']}"]  # R4: "the URL is interpreted as the service base"
        assert json.loads(update.body) == full and update.headers["content-type"] == "application/fhir+json"
        assert update.method == "PUT"
        assert ping["id"] not in str(by_target)


async def test_status_error_after_repeated_failures_then_active_again(store_url, receiver):
    async with secured(store_url, outbox_max_attempts=2) as (c, app):
        deliverer = app.state.deliverer
        anne = token("patient/*.cruds", **ANNE)
        sub = await created(c, subscription("Observation", hook(receiver.url, header=[SECRET_HEADER])), anne)
        receiver.statuses = [500, 503]
        await created(c, observation("1", "anne"), anne)
        item = (await outbox(app))[0]
        assert await deliverer.run_once(item.due) == 1  # first failure: retried later, status unchanged
        assert (await c.get(f"/Subscription/{sub['id']}", headers=anne)).json()["status"] == "active"
        assert await deliverer.run_once(item.due + HOUR) == 1  # second failure: given up
        failed = (await c.get(f"/Subscription/{sub['id']}", headers=anne)).json()
        assert failed["status"] == "error" and "HTTP 503" in failed["error"] and "given up after 2" in failed["error"]
        assert "hook-secret" not in failed["error"] and "127.0.0.1" not in failed["error"]
        # A server write: the recorded subscriber and the owner tag are kept.
        assert failed["meta"]["versionId"] == "2" and failed["meta"]["tag"] == sub["meta"]["tag"]
        assert failed["extension"] == sub["extension"]
        # Still evaluated in error: the next delivery that gets through restores active.
        await created(c, observation("2", "anne"), anne)
        assert await deliverer.run_once() == 1
        restored = (await c.get(f"/Subscription/{sub['id']}", headers=anne)).json()
        assert restored["status"] == "active" and restored["meta"]["versionId"] == "3"
        assert len(receiver.requests) == 3
        # The server's status writes are versions of their own.
        history = (await c.get(f"/Subscription/{sub['id']}/_history", headers=anne)).json()
        assert [e["resource"]["status"] for e in history["entry"]] == ["active", "error", "active"]


# --- end to end: email -----------------------------------------------------------------------------------


@dataclass
class Inbox:
    messages: list[email.message.EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's hook name
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


async def test_email_end_to_end(store_url):
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        async with server(
            store_url, smtp_host="127.0.0.1", smtp_port=smtp.port, base_url="https://mes.example/fhir"
        ) as (c, app):
            await created(
                c,
                subscription("Observation?status=final", {"type": "email", "endpoint": "mailto:pierre.durand@aphp.fr"}),
            )
            obs = await created(c, observation("1", text="Glycémie 2,1 g/L"))
            assert await app.state.deliverer.run_once() == 1
    finally:
        smtp.stop()
    [message] = inbox.messages
    assert message["To"] == "pierre.durand@aphp.fr"
    text = message.get_body(("plain",)).get_content()
    assert f"https://mes.example/fhir/Observation/{obs['id']}" in text
    assert "Glycémie" not in text + message["Subject"]


# --- the CapabilityStatement -----------------------------------------------------------------------------


async def test_capability_statement_names_the_channels(store_url):
    async with server(store_url) as (c, _):
        statement = (await c.get("/metadata")).json()
    [entry] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription"]
    assert {"create", "read", "update", "delete", "search-type"} <= {i["code"] for i in entry["interaction"]}
    assert "rest-hook" in entry["documentation"] and "email" in entry["documentation"]
    assert "websocket" in entry["documentation"]

"""The outbox's delivery worker against real servers: email to a local SMTP server (aiosmtpd; plain,
STARTTLS with login, implicit TLS), rest-hooks to a local HTTP receiver answering 500 then 200; retries with
backoff driven by ``run_once(now=…)``, giving up, a restart, the background loop (notify/delivery.py)."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import ipaddress
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fhir_server.config import Settings, SettingsError, load_settings
from fhir_server.notify.delivery import SECOND, Deliverer, DeliveryError, backoff, build_deliverer
from fhir_server.notify.email import EmailSender
from fhir_server.notify.hooks import HookSender, parse_headers
from fhir_server.notify.outbox import EMAIL, REST_HOOK, OutboxItem
from fhir_server.store import Store, open_store

T0 = 1_750_000_000 * SECOND
FROM = "Mon espace santé <no-reply@mes.example>"


# --- a local SMTP server ------------------------------------------------------------------------------


@dataclass
class Inbox:
    """aiosmtpd handler: keeps every message; refuses the recipients in ``refuse``."""

    messages: list[tuple[list[str], EmailMessage, bool]] = field(default_factory=list)  # (rcpt, message, authed)
    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: recipient unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message, bool(session.authenticated)))
        return "250 Message accepted for delivery"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"mes", b"s3cret")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 235 or 535 itself


def smtp_server(inbox: Inbox, **kwargs: object) -> Iterator[Controller]:
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def smtp(inbox: Inbox) -> Iterator[Controller]:
    """Plain SMTP on a free port."""
    yield from smtp_server(inbox)


@dataclass
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 / localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Certificate(folder / "cert.pem", folder / "key.pem")


# --- a local HTTP receiver for rest-hooks --------------------------------------------------------------


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class HookReceiver:
    """A minimal HTTP/1.1 server: records each request, answers the next of ``statuses`` (then 200) with a
    body the sender must never repeat; ``delay``: seconds before answering."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?channel=1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in head[1:] if line)]
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            body = await reader.readexactly(length)
            self.requests.append(Received(method, target, headers, body))
            if self.delay:
                await asyncio.sleep(self.delay)
            status = self.statuses.pop(0) if self.statuses else 200
            answer = b"SECRET-ANSWER-BODY"
            writer.write(
                f"HTTP/1.1 {status} Whatever\r\nContent-Length: {len(answer)}\r\nConnection: close\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[HookReceiver]:
    hooks = HookReceiver()
    server = await asyncio.start_server(hooks.handle, "127.0.0.1", 0)
    hooks.port = server.sockets[0].getsockname()[1]
    try:
        yield hooks
    finally:
        server.close()
        await server.wait_closed()


# --- helpers ---------------------------------------------------------------------------------------------


@dataclass
class Settled:
    calls: list[tuple[OutboxItem, bool, str | None, bool]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, item: OutboxItem, delivered: bool, error: str | None, gave_up: bool) -> None:
        self.calls.append((item, delivered, error, gave_up))
        self.event.set()


async def enqueue(store: Store, *items: OutboxItem) -> None:
    async def work(tx):
        for item in items:
            await tx.enqueue(item)

    await store.transact(work)


def new_id() -> str:
    return uuid.uuid4().hex


def email_item(due: int = T0) -> OutboxItem:
    payload = {"to": "zoe.lefevre@example.org", "subject": "Un nouveau document", "text": "Bonjour Zoé,\n"}
    return OutboxItem(new_id(), EMAIL, payload, due=due)


def hook_item(url: str, due: int = T0, **payload: object) -> OutboxItem:
    base = {
        "url": url,
        "headers": ["Authorization: Bearer hook-token", "X-Subscription: sub-1"],
        "body": b'{"resourceType":"Bundle","type":"history"}',
        "content_type": "application/fhir+json",
        "subscription": "sub-1",
    }
    return OutboxItem(new_id(), REST_HOOK, {**base, **payload}, due=due)


# --- email -----------------------------------------------------------------------------------------------


async def test_email_is_sent_over_smtp(store: Store, smtp: Controller, inbox: Inbox) -> None:
    item = OutboxItem(
        new_id(),
        EMAIL,
        {
            "to": "zoe.lefevre@example.org",
            "subject": "Un nouveau document est disponible",
            "text": "Bonjour Zoé,\nun document a été ajouté à votre dossier.\n",
            "html": "<p>Bonjour Zoé,</p><p>un document a été ajouté à votre dossier.</p>",
        },
        due=T0,
    )
    await enqueue(store, item)
    settled = Settled()
    sender = EmailSender("127.0.0.1", smtp.port, sender=FROM, timeout=10)
    deliverer = Deliverer(store, {EMAIL: sender}, on_settled=settled)
    assert await deliverer.run_once(now=T0) == 1

    ((rcpt, message, authed),) = inbox.messages
    assert rcpt == ["zoe.lefevre@example.org"] and not authed
    assert message["From"] == FROM
    assert message["To"] == "zoe.lefevre@example.org"
    assert message["Subject"] == "Un nouveau document est disponible"
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@mes.example>")
    sent = parsedate_to_datetime(message["Date"])
    assert abs((datetime.datetime.now(datetime.UTC) - sent).total_seconds()) < 120
    assert message.get_content_type() == "multipart/alternative"
    assert (
        message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        == "Bonjour Zoé,\nun document a été ajouté à votre dossier.\n"
    )
    assert "<p>Bonjour Zoé,</p>" in message.get_body(("html",)).get_content()

    assert await store.outbox_items() == []
    ((settled_item, delivered, error, gave_up),) = settled.calls
    assert (settled_item.id, settled_item.attempts, delivered, error, gave_up) == (item.id, 1, True, None, False)


async def test_email_text_only_and_several_recipients(smtp: Controller, inbox: Inbox) -> None:
    sender = EmailSender("127.0.0.1", smtp.port, sender=FROM, timeout=10)
    await sender({"to": ["a@example.org", "b@example.org"], "subject": "Rappel", "text": "Rendez-vous demain."})
    ((rcpt, message, _),) = inbox.messages
    assert rcpt == ["a@example.org", "b@example.org"]
    assert message["To"] == "a@example.org, b@example.org"
    assert message.get_content_type() == "text/plain"
    assert message.get_content().replace("\r\n", "\n") == "Rendez-vous demain.\n"


def test_email_starttls_with_login(certificate: Certificate, inbox: Inbox) -> None:
    for controller in smtp_server(
        inbox,
        tls_context=certificate.server_context(),
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    ):
        tls = certificate.client_context()
        good = EmailSender(
            "127.0.0.1", controller.port, tls="starttls", username="mes", password="s3cret", tls_context=tls
        )
        asyncio.run(good({"to": "zoe@example.org", "subject": "s", "text": "t"}))
        ((_, message, authed),) = inbox.messages
        assert authed and message["Subject"] == "s"

        wrong = EmailSender("127.0.0.1", controller.port, tls="starttls", username="mes", password="x", tls_context=tls)
        with pytest.raises(DeliveryError) as refused:
            asyncio.run(wrong({"to": "zoe@example.org", "subject": "s", "text": "t"}))
        assert "535" in str(refused.value) and not refused.value.permanent

        plain = EmailSender("127.0.0.1", controller.port, tls="none", timeout=5)  # the server requires STARTTLS
        with pytest.raises(DeliveryError):
            asyncio.run(plain({"to": "zoe@example.org", "subject": "s", "text": "t"}))

        untrusted = EmailSender("127.0.0.1", controller.port, tls="starttls", timeout=5)  # system CAs only
        with pytest.raises(DeliveryError):
            asyncio.run(untrusted({"to": "zoe@example.org", "subject": "s", "text": "t"}))
        assert len(inbox.messages) == 1


def test_email_implicit_tls(certificate: Certificate, inbox: Inbox) -> None:
    for controller in smtp_server(inbox, ssl_context=certificate.server_context()):
        sender = EmailSender("127.0.0.1", controller.port, tls="tls", tls_context=certificate.client_context())
        asyncio.run(sender({"to": "zoe@example.org", "subject": "TLS", "text": "t", "html": "<b>t</b>"}))
        ((_, message, _),) = inbox.messages
        assert message["Subject"] == "TLS"


async def test_email_failures_are_explained_without_the_address(smtp: Controller, inbox: Inbox) -> None:
    inbox.refuse.add("nobody@example.org")
    sender = EmailSender("127.0.0.1", smtp.port, timeout=10)
    with pytest.raises(DeliveryError) as refused:
        await sender({"to": "nobody@example.org", "subject": "s", "text": "t"})
    assert refused.value.permanent and "550" in str(refused.value) and "nobody" not in str(refused.value)

    closed = EmailSender("127.0.0.1", free_port(), timeout=5)
    with pytest.raises(DeliveryError) as unreachable:
        await closed({"to": "zoe@example.org", "subject": "s", "text": "t"})
    assert not unreachable.value.permanent and "zoe" not in str(unreachable.value)

    for payload in ({"subject": "s", "text": "t"}, {"to": "not an address", "text": "t"}, {"to": "a@b.c"}):
        with pytest.raises(DeliveryError) as bad:
            await sender(payload)
        assert bad.value.permanent
    with pytest.raises(DeliveryError) as header:
        await sender({"to": "a@b.c", "subject": "line\nBcc: evil@example.org", "text": "t"})
    assert header.value.permanent
    assert inbox.messages == []


async def test_email_disabled_items_stay_pending(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    item = email_item()
    await enqueue(store, item)
    deliverer = Deliverer(store, {REST_HOOK: HookSender()}, poll=3600)
    with caplog.at_level(logging.WARNING, logger="fhir_server.notify.delivery"):
        await deliverer.start()
        await deliverer.stop()
        assert await deliverer.run_once(now=T0 + 3600 * SECOND) == 0
    assert [r.getMessage() for r in caplog.records].count(
        "email disabled (FHIR_SERVER_SMTP_HOST not set): email notifications stay in the outbox"
    ) == 1
    assert await store.outbox_items("pending") == [item]


# --- rest-hooks ------------------------------------------------------------------------------------------


async def test_hook_retried_with_backoff_then_delivered(store: Store, receiver: HookReceiver) -> None:
    receiver.statuses = [500]
    item = hook_item(receiver.url)
    await enqueue(store, item)
    settled = Settled()
    deliverer = Deliverer(store, {REST_HOOK: HookSender(timeout=5)}, on_settled=[settled])

    assert await deliverer.run_once(now=T0) == 1
    (pending,) = await store.outbox_items("pending")
    assert (pending.attempts, pending.due) == (1, T0 + 30 * SECOND)
    assert pending.last_error == "rest-hook: HTTP 500 Internal Server Error"  # never the answer's body
    assert settled.calls[-1][1:] == (False, "rest-hook: HTTP 500 Internal Server Error", False)
    assert settled.calls[-1][0].due == T0 + 30 * SECOND and settled.calls[-1][0].attempts == 1

    assert await deliverer.run_once(now=T0 + 30 * SECOND - 1) == 0  # not yet due
    assert len(receiver.requests) == 1
    assert await deliverer.run_once(now=T0 + 30 * SECOND) == 1
    assert await store.outbox_items() == []
    assert settled.calls[-1][1:] == (True, None, False) and settled.calls[-1][0].attempts == 2

    assert len(receiver.requests) == 2
    for request in receiver.requests:
        assert (request.method, request.target) == ("POST", "/hook?channel=1")
        assert request.header("Authorization") == ["Bearer hook-token"]
        assert request.header("X-Subscription") == ["sub-1"]
        assert request.header("Content-Type") == ["application/fhir+json"]
        assert request.body == b'{"resourceType":"Bundle","type":"history"}'


async def test_hook_gives_up_after_max_attempts(store: Store, receiver: HookReceiver) -> None:
    receiver.statuses = [503] * 10
    item = hook_item(receiver.url)
    await enqueue(store, item)
    settled = Settled()
    deliverer = Deliverer(store, {REST_HOOK: HookSender(timeout=5)}, on_settled=settled, max_attempts=3)

    now = T0
    for attempt in (1, 2):
        assert await deliverer.run_once(now=now) == 1
        (pending,) = await store.outbox_items("pending")
        assert (pending.attempts, pending.due) == (attempt, now + backoff(attempt))
        now = pending.due
    assert await deliverer.run_once(now=now) == 1
    assert await store.outbox_items("pending") == []
    (failed,) = await store.outbox_items("failed")
    assert (failed.id, failed.attempts, failed.state) == (item.id, 3, "failed")
    assert failed.last_error == "rest-hook: HTTP 503 Service Unavailable"
    assert [c[3] for c in settled.calls] == [False, False, True]
    assert settled.calls[-1][0].state == "failed"
    assert await deliverer.run_once(now=now + 10**12) == 0  # never again
    assert len(receiver.requests) == 3


def test_backoff_schedule() -> None:
    assert [backoff(n) // SECOND for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


async def test_hook_permanent_failures_give_up_at_once(store: Store) -> None:
    bad = [
        hook_item("ftp://127.0.0.1/x"),
        hook_item("http://127.0.0.1:9/x", headers=["no colon here"]),
        hook_item("http://127.0.0.1:9/x", body=12),
    ]
    await enqueue(store, *bad)
    settled = Settled()
    deliverer = Deliverer(store, {REST_HOOK: HookSender(timeout=5)}, on_settled=settled)
    assert await deliverer.run_once(now=T0) == 3
    assert {i.id for i in await store.outbox_items("failed")} == {i.id for i in bad}
    assert all(c[3] and c[0].attempts == 1 for c in settled.calls)
    assert parse_headers(["A: b: c", "X-Empty:"]) == [("A", "b: c"), ("X-Empty", "")]


async def test_hook_empty_notification_and_failures(receiver: HookReceiver) -> None:
    sender = HookSender(timeout=0.3)
    try:
        await sender({"url": receiver.url, "headers": [], "body": None, "content_type": "application/fhir+json"})
        (request,) = receiver.requests
        assert request.body == b"" and request.header("Content-Type") == []
        assert request.header("Content-Length") == ["0"]

        await sender({"url": receiver.url, "headers": None, "body": "{}"})  # str body, default content type
        assert receiver.requests[-1].header("Content-Type") == ["application/fhir+json"]

        receiver.statuses = [302]
        with pytest.raises(DeliveryError, match="HTTP 302"):
            await sender({"url": receiver.url, "headers": []})

        receiver.delay = 1.0
        with pytest.raises(DeliveryError, match=r"no answer within 0\.3 s") as slow:
            await sender({"url": receiver.url, "headers": []})
        assert not slow.value.permanent
    finally:
        await sender.aclose()

    with pytest.raises(DeliveryError, match="request failed") as refused:
        await HookSender(timeout=2)({"url": f"http://127.0.0.1:{free_port()}/x", "headers": []})
    assert "127.0.0.1" not in str(refused.value)


# --- restarts, the loop, errors --------------------------------------------------------------------------


async def test_a_new_deliverer_on_a_reopened_store_delivers(store_url: str, receiver: HookReceiver) -> None:
    first = open_store(store_url)
    await first.start()
    done, crashed = hook_item(receiver.url), hook_item(receiver.url, due=T0 + 1)
    await enqueue(first, done, crashed)
    # a worker leased the second item and died before settling it
    assert [i.id for i in await first.outbox_claim(T0 + 1, T0 + 1 + 60 * SECOND, 1, channels=[REST_HOOK])] == [done.id]
    await first.outbox_settle(done.id, delivered=False, attempts=1, due=T0 + 2)  # returned to the queue
    await first.close()

    second = open_store(store_url)
    await second.start()
    try:
        deliverer = Deliverer(second, {REST_HOOK: HookSender(timeout=5)})
        assert await deliverer.run_once(now=T0 + 2) == 2
        assert await second.outbox_items() == []
        assert len(receiver.requests) == 2
    finally:
        await deliverer.stop()
        await second.close()


async def test_a_lease_outlives_a_crashed_worker(store_url: str, receiver: HookReceiver) -> None:
    first = open_store(store_url)
    await first.start()
    item = hook_item(receiver.url)
    await enqueue(first, item)
    assert len(await first.outbox_claim(T0, T0 + 60 * SECOND, 10)) == 1  # then the process dies
    await first.close()

    second = open_store(store_url)
    await second.start()
    try:
        deliverer = Deliverer(second, {REST_HOOK: HookSender(timeout=5)})
        assert await deliverer.run_once(now=T0 + 59 * SECOND) == 0  # still leased
        assert await deliverer.run_once(now=T0 + 60 * SECOND) == 1
        assert await second.outbox_items() == [] and len(receiver.requests) == 1
    finally:
        await deliverer.stop()
        await second.close()


async def test_background_loop_delivers_at_start_and_on_wake(store: Store, receiver: HookReceiver) -> None:
    await enqueue(store, hook_item(receiver.url, due=0))  # pending before the start
    settled = Settled()
    deliverer = Deliverer(store, {REST_HOOK: HookSender(timeout=5)}, on_settled=settled, poll=3600)
    await deliverer.start()
    try:
        assert deliverer.running
        await asyncio.wait_for(settled.event.wait(), 10)
        settled.event.clear()
        await enqueue(store, hook_item(receiver.url, due=0))
        deliverer.wake()  # the poll is an hour: only the wake can deliver it
        await asyncio.wait_for(settled.event.wait(), 10)
    finally:
        await deliverer.stop()
    assert not deliverer.running
    assert [c[1] for c in settled.calls] == [True, True]
    assert await store.outbox_items() == []


class FlakyStore:
    """A store whose first claim fails (the database was unreachable)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failures = 1

    async def outbox_claim(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database unreachable")
        return await self.inner.outbox_claim(*args, **kwargs)

    async def outbox_settle(self, *args, **kwargs):
        return await self.inner.outbox_settle(*args, **kwargs)


async def test_loop_survives_errors_and_never_logs_payloads(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    secret = "zoe.secret@example.org"

    async def broken_sender(payload):
        raise RuntimeError(f"cannot send to {payload['to']}")

    async def broken_listener(item, delivered, error, gave_up):
        raise ValueError(f"listener saw {item.payload}")

    settled = Settled()
    await enqueue(store, OutboxItem(new_id(), EMAIL, {"to": secret, "subject": "s", "text": "t"}, due=0))
    deliverer = Deliverer(
        FlakyStore(store),  # type: ignore[arg-type]
        {EMAIL: broken_sender},
        on_settled=[broken_listener, settled],
        poll=0.05,
    )
    with caplog.at_level(logging.DEBUG, logger="fhir_server.notify.delivery"):
        await deliverer.start()
        try:
            await asyncio.wait_for(settled.event.wait(), 10)
        finally:
            await deliverer.stop()
    (item,) = await store.outbox_items("pending")
    assert item.attempts == 1 and item.last_error == "email: unexpected RuntimeError"
    assert settled.calls[0][1:] == (False, "email: unexpected RuntimeError", False)
    logs = caplog.text
    assert "database unreachable" in logs and "a settlement listener failed" in logs
    assert secret not in logs and "zoe" not in logs


# --- settings and wiring ---------------------------------------------------------------------------------


def test_settings() -> None:
    settings = Settings()
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_tls) == (None, 25, "none")
    assert (settings.outbox_poll_seconds, settings.outbox_max_attempts) == (5.0, 8)
    assert EmailSender.from_settings(settings) is None
    configured = Settings(smtp_host="smtp.example.org", smtp_tls="STARTTLS", smtp_password="pw", smtp_port=587)
    assert configured.smtp_tls == "starttls" and "pw" not in repr(configured)
    sender = EmailSender.from_settings(configured)
    assert sender is not None and (sender.host, sender.port, sender.tls) == ("smtp.example.org", 587, "starttls")
    with pytest.raises(SettingsError, match="smtp_tls"):
        load_settings(smtp_tls="ssl")
    with pytest.raises(ValueError):
        EmailSender("h", tls="ssl")


async def test_the_app_runs_the_deliverer(store_url: str, receiver: HookReceiver) -> None:
    from fhir_server.app import create_app

    app = create_app(Settings(store=store_url, auth=False, load_definitions=False, validation_processes=0))
    deliverer = app.state.deliverer
    assert set(deliverer.senders) == {REST_HOOK}
    async with app.router.lifespan_context(app):
        assert deliverer.running
        settled = Settled()
        deliverer.on_settled.append(settled)
        await enqueue(deliverer.store, hook_item(receiver.url, due=0))
        deliverer.wake()
        await asyncio.wait_for(settled.event.wait(), 10)
    assert not deliverer.running
    assert len(receiver.requests) == 1

    with_email = build_deliverer(deliverer.store, Settings(smtp_host="127.0.0.1", outbox_max_attempts=2))
    assert set(with_email.senders) == {EMAIL, REST_HOOK} and with_email.max_attempts == 2

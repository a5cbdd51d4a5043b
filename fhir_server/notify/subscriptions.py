"""R4 Subscriptions (http://hl7.org/fhir/R4/subscription.html): rest-hook and email channels, evaluated on every
write in its unit of work, each subscriber notified only about what its own access may read.

Three moments (docs/notifications.md, "R4 Subscriptions"):

* **Written by a client** — ``normalise`` (called by ``crud._write`` for every Subscription version a client
  writes, whatever the path: create, update, conditional, PATCH, Bundle entries) checks ``criteria`` with the
  server's search parser and the channel, and sets the server-owned ``status`` (``requested`` → ``active``;
  ``off`` once ``end`` has passed). ``record_subscriber`` (called by the access guard's ``prepare_write``
  for an authenticated caller) stamps who the subscription runs for: an owner tag (``meta.tag``, what
  confines Subscriptions to their owner) and the token claims that define the caller's access (an extension
  the server always overwrites; never a token).
* **Any other resource written** — ``Subscriptions.written`` (a ``WriteObserver``) finds the live
  subscriptions on the written type (a cache, reloaded at once after a Subscription change in this process,
  within ``RELOAD_SECONDS`` otherwise), tests each one's criteria ANDed with what its subscriber may read
  against the new version in the same transaction, and enqueues one outbox item per match.
* **Delivered** — ``Subscriptions.settled`` (a ``Deliverer.on_settled`` listener) sets ``status`` to
  ``error`` (with the reason) when a delivery is given up, back to ``active`` on the next success.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from ..errors import FhirError, Issue, bad_request, not_supported
from ..fhirjson import dumps, loads
from ..instant import date_range, new_id, now_us, to_instant
from ..interactions.access import NOTHING, UNRESTRICTED, Access, within
from ..interactions.crud import stamp
from ..policy.access import access_for
from ..search.indexing import IndexEntry, index_entries
from ..search.parameters import Scope, parse
from ..security.access import SUBSCRIPTION_OWNER, owner_tag
from ..security.principal import ACCESS_MODE_SCOPE, Principal
from ..space import representatives
from ..space.clock import CLOCK
from ..store import ResourceVersion, Store, Transaction
from ..store.query import AllOf, AnyOf, Condition, IdIn, Search
from ..validation import R4_RESOURCE_TYPES
from .outbox import EMAIL, REST_HOOK, OutboxItem

if TYPE_CHECKING:
    from ..config import Settings
    from .delivery import Deliverer

log = logging.getLogger(__name__)

TYPE = "Subscription"
#: The token claims a Subscription runs under (JSON in ``valueString``), written by the server only.
SUBSCRIBER_EXTENSION = "https://github.com/fhir-server/fhir-server/StructureDefinition/subscription-subscriber"
#: Statuses the server evaluates: ``error`` too, so that the next successful delivery can restore ``active``.
LIVE = ("active", "error")
#: Seconds a process trusts its list of live subscriptions (others' changes); its own are seen at once.
RELOAD_SECONDS = 2.0
#: After a Subscription change in this process: reloaded at most this often until ``SETTLE_SECONDS`` pass (the
#: unit of work that wrote it has committed by then).
RELOAD_SOON_SECONDS = 0.05
SETTLE_SECONDS = 2.0
PAGE = 1000
#: Result parameters have no meaning in criteria (as in conditional interactions: search/criteria.py).
_RESULT_PARAMETERS = ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_contained",
                      "_containedType")  # fmt: skip
_JSON_PAYLOADS = ("application/fhir+json", "application/json")
#: Headers a subscription may not set: HTTP framing, or what the delivery sets itself.
_RESERVED_HEADERS = ("host", "content-length", "transfer-encoding", "connection", "content-type", "te", "upgrade")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ADDRESS = re.compile(r"^[^\s<>@,;:\"'()\[\]\\]+@[^\s<>@,;:\"'()\[\]\\]+\.[^\s<>@,;:\"'()\[\]\\]+$")
_ERROR_LENGTH = 300


# --- what a client may write ----------------------------------------------------------------------------------


def normalise(resource: dict, now: int | None = None) -> dict:
    """The Subscription as stored, or a 400 naming what the server cannot run.

    R4 Subscription.status: "A client can only submit subscription resources in the requested or off state.
    Only the server can move a subscription from requested to active, and then to error." A client's
    ``requested`` (or an ``active`` sent back unchanged) becomes ``active`` once criteria and channel are
    checked; ``off`` stays off; ``end`` already past turns it off.
    """
    criteria = resource.get("criteria")
    if not isinstance(criteria, str) or not criteria:
        raise bad_request("Subscription.criteria is required: [type]?[search parameters]", expression=_at("criteria"))
    parse_criteria(criteria)
    check_channel(resource.get("channel"))
    status = resource.get("status")
    if status not in ("requested", "active", "off"):
        raise bad_request(
            f"Subscription.status {status!r}: a client submits a Subscription as requested (or off); the server "
            "sets active and error",
            expression=_at("status"),
        )
    wanted = "off" if status == "off" else "active"
    end = subscription_end(resource)
    if end is not None and end <= (now_us() if now is None else now):
        wanted = "off"  # R4 Subscription.end: "The time for the server to turn the subscription off"
    return resource if wanted == status else {**resource, "status": wanted}


def parse_criteria(criteria: str, scope: Scope | None = None) -> Search:
    """``Type?name=value&…`` (R4 Subscription.criteria: search criteria without [base]) as a store Search; a
    400 naming the unknown type or parameter (the search parser's own message), never a criterion ignored."""
    type_, _, query = criteria.partition("?")
    if type_ not in R4_RESOURCE_TYPES:
        raise bad_request(
            f"Subscription.criteria {criteria!r}: {type_!r} is not a resource type (expected [type]?[parameters], "
            "without the server base)",
            expression=_at("criteria"),
        )
    if type_ == TYPE:
        raise not_supported(
            "Subscription.criteria: Subscriptions cannot watch Subscriptions", expression=_at("criteria")
        )
    pairs = parse_qsl(query, keep_blank_values=True)
    for name, _ in pairs:
        if name in _RESULT_PARAMETERS:
            raise bad_request(f"Subscription.criteria: {name} is not a search criterion", expression=_at("criteria"))
    try:
        return parse(type_, pairs, scope or Scope())
    except FhirError as exc:
        issues = [
            Issue(i.code, f"Subscription.criteria: {i.diagnostics}", i.severity, _at("criteria")) for i in exc.issues
        ]
        raise FhirError(400, issues) from None


def check_channel(channel: object) -> None:
    """R4 Subscription.channel: rest-hook (an absolute http(s) URL) and email (a ``mailto:`` address) are run
    here; websocket, sms and message are not."""
    if not isinstance(channel, dict):
        raise bad_request("Subscription.channel is required", expression=_at("channel"))
    kind = channel.get("type")
    endpoint = channel.get("endpoint")
    payload = channel.get("payload")
    if kind == REST_HOOK:
        parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise bad_request(
                "Subscription.channel.endpoint of a rest-hook must be an absolute http: or https: URL",
                expression=_at("channel.endpoint"),
            )
        if parts.username is not None or parts.password is not None:
            raise bad_request(
                "Subscription.channel.endpoint: no credentials in the URL (send them as a channel.header)",
                expression=_at("channel.endpoint"),
            )
        if payload is not None and _mime(payload) not in _JSON_PAYLOADS:
            raise not_supported(
                f"Subscription.channel.payload {payload!r} is not supported: application/fhir+json, or no payload "
                "for a notification without content",
                expression=_at("channel.payload"),
            )
        for n, header in enumerate(channel.get("header") or ()):
            _check_header(header, n)
    elif kind == EMAIL:
        if email_address(endpoint) is None:
            raise bad_request(
                "Subscription.channel.endpoint of an email channel must be mailto: and one email address",
                expression=_at("channel.endpoint"),
            )
        if payload is not None and _mime(payload) != "text/plain":
            raise not_supported(
                "Subscription.channel.payload: an email notification carries no resource content (no health data "
                "by email): omit payload (or text/plain)",
                expression=_at("channel.payload"),
            )
    else:
        raise not_supported(
            f"Subscription.channel.type {kind!r} is not supported by this server: rest-hook or email",
            expression=_at("channel.type"),
        )


def email_address(endpoint: object) -> str | None:
    if not isinstance(endpoint, str) or not endpoint.startswith("mailto:"):
        return None
    address = unquote(endpoint[len("mailto:") :])
    return address if _ADDRESS.match(address) else None


def subscription_end(resource: dict) -> int | None:
    end = resource.get("end")
    found = date_range(end) if isinstance(end, str) else None
    return found[0] if found else None


def _check_header(header: object, n: int) -> None:
    name, colon, value = header.partition(":") if isinstance(header, str) else ("", "", "")
    where = _at(f"channel.header[{n}]")
    if not colon or not _HEADER_NAME.match(name.strip()) or any(c in value for c in "\r\n\0"):
        raise bad_request(f"Subscription.channel.header[{n}] is not 'Name: value'", expression=where)
    if name.strip().lower() in _RESERVED_HEADERS:
        raise bad_request(f"Subscription.channel.header[{n}]: {name.strip()} is set by the server", expression=where)


def _mime(value: object) -> str:
    return str(value).split(";", 1)[0].strip().lower()


def _at(path: str) -> tuple[str, ...]:
    return (f"Subscription.{path}",)


# --- who a subscription runs for ------------------------------------------------------------------------------


def subscriber_claims(principal: Principal) -> dict:
    """The claims that define a token's access, as ``Principal.from_claims`` reads them: no jti, no expiry, no
    audience, and no emergency mode (a bris de glace is for one access, never a standing one)."""
    scope = " ".join(s for s in principal.scope.split() if not s.startswith(ACCESS_MODE_SCOPE))
    claims: dict = {"client_id": principal.client_id, "sub": principal.subject, "scope": scope}
    if principal.patient:
        claims["patient"] = principal.patient
    if principal.fhir_user:
        claims["fhirUser"] = principal.fhir_user
    if principal.managed_patients:
        claims["managed_patients"] = list(principal.managed_patients)
    if principal.represented:  # reached through RelatedPersons: re-checked at each delivery
        claims["represented"] = list(principal.represented)
    if principal.professional is not None:
        claims["ps"] = principal.professional.to_claim()
    return claims


def record_subscriber(
    principal: Principal, owner: str, version: ResourceVersion
) -> tuple[ResourceVersion, Sequence[IndexEntry]]:
    """The Subscription an authenticated caller writes, stamped with its owner tag and its subscriber claims
    (whatever the client sent under those names is replaced)."""
    body = loads(version.body or b"{}", max_depth=1 << 20)
    meta = dict(body.get("meta") or {})
    tags = [t for t in meta.get("tag") or () if not (isinstance(t, dict) and t.get("system") == SUBSCRIPTION_OWNER)]
    meta["tag"] = [*tags, {"system": SUBSCRIPTION_OWNER, "code": owner_tag(owner)}]
    body["meta"] = meta
    extensions = [
        e for e in body.get("extension") or () if not (isinstance(e, dict) and e.get("url") == SUBSCRIBER_EXTENSION)
    ]
    claims = dumps(subscriber_claims(principal)).decode()
    body["extension"] = [*extensions, {"url": SUBSCRIBER_EXTENSION, "valueString": claims}]
    return replace(version, body=dumps(body)), index_entries(body)


def subscriber_access(resource: dict) -> Access:
    """The access a Subscription's notifications are confined to: rebuilt from its recorded claims as the
    policy builds it for a token (``access_for``); none recorded (written with auth off, or by the server):
    unrestricted. Unreadable claims reach nothing."""
    recorded = [
        e for e in resource.get("extension") or () if isinstance(e, dict) and e.get("url") == SUBSCRIBER_EXTENSION
    ]
    if not recorded:
        return UNRESTRICTED
    try:
        claims = loads(str(recorded[-1].get("valueString") or "").encode())
        if not isinstance(claims, dict):
            raise ValueError("not a JSON object")
        return access_for(Principal.from_claims(claims))
    except Exception:  # malformed claims: the subscription reaches nothing
        return _NO_ACCESS


class _Nothing(Access):
    restricted = True

    def may(self, type_: str, permission: str) -> bool:
        return False

    def constraints(self, type_: str, permissions: str = "rs") -> tuple[Condition, ...]:
        return NOTHING


_NO_ACCESS = _Nothing()


# --- evaluation on every write -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Active:
    """A live subscription as evaluated: ``where`` is its criteria ANDed with what its subscriber may read."""

    id: str
    version: int
    type: str
    where: tuple[Condition, ...]
    channel: str
    endpoint: str  # rest-hook: the URL; email: the address
    payload: str | None  # rest-hook: the mime type the resource is sent in; None: a notification without body
    headers: tuple[str, ...]
    end: int | None


class Subscriptions:
    """The engine: a ``WriteObserver`` (``Context.observers``) and a ``Deliverer.on_settled`` listener."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        deliverer: Deliverer | None = None,
        *,
        clock: Callable[[], int] = now_us,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.base = (settings.base_url or "").rstrip("/")
        self.clock = clock
        self.monotonic = monotonic
        self._by_type: dict[str, tuple[Active, ...]] = {}
        self._built: dict[str, tuple[int, Active | None]] = {}  # id → (version, what it built to)
        self._loaded_at: float | None = None
        self._changed_at = float("-inf")
        self._settling_until = 0.0
        self._lock = asyncio.Lock()
        self._deliverer = deliverer
        if deliverer is not None:
            deliverer.on_settled.append(self.settled)
            deliverer.before_send.append(self.admissible)

    # -- the WriteObserver side ----------------------------------------------------------------------------

    async def written(self, tx: Transaction, version: ResourceVersion, entries: Sequence[IndexEntry]) -> None:
        if version.type == TYPE:
            self.changed()
            return
        if version.deleted:
            return  # R4: criteria are applied to the new content of a created or updated resource; none here
        candidates = (await self._table()).get(version.type)
        if candidates:
            await self._evaluate(tx, version, candidates)

    def changed(self) -> None:
        """A Subscription was written here: reload on the next write, then often until the unit of work that
        wrote it has surely committed (a reload reads committed data only)."""
        self._changed_at = self.monotonic()
        self._settling_until = self._changed_at + SETTLE_SECONDS

    async def _table(self) -> dict[str, tuple[Active, ...]]:
        if self._fresh():
            return self._by_type
        async with self._lock:
            if not self._fresh():
                await self._reload()
        return self._by_type

    def _fresh(self) -> bool:
        if self._loaded_at is None or self._loaded_at <= self._changed_at:
            return False
        now = self.monotonic()
        return now - self._loaded_at < (RELOAD_SOON_SECONDS if now < self._settling_until else RELOAD_SECONDS)

    async def _reload(self) -> None:
        """The committed live subscriptions (read outside the unit of work: what others committed), only the
        new versions parsed again."""
        started = self.monotonic()
        live = Search(TYPE, parse(TYPE, [("status", ",".join(LIVE))]).where)
        built: dict[str, tuple[int, Active | None]] = {}
        after: str | None = None
        while True:
            page = await self.store.search(live, PAGE, after)
            for version in page:
                known = self._built.get(version.id)
                built[version.id] = (
                    known if known and known[0] == version.version else (version.version, self._build(version))
                )
            if len(page) < PAGE:
                break
            after = page[-1].id
        by_type: dict[str, list[Active]] = {}
        for _, active in built.values():
            if active is not None:
                by_type.setdefault(active.type, []).append(active)
        self._built = built
        self._by_type = {t: tuple(found) for t, found in by_type.items()}
        self._loaded_at = started

    def _build(self, version: ResourceVersion | None) -> Active | None:
        """What a stored Subscription version runs as; None when it does not run (not live, or it can reach
        nothing of its type, or criteria the parser no longer accepts: logged)."""
        if version is None or version.body is None:
            return None
        try:
            body = loads(version.body, max_depth=1 << 20)
            if body.get("status") not in LIVE:
                return None
            access = subscriber_access(body)
            type_ = str(body.get("criteria") or "").partition("?")[0]
            if not access.may(type_, "r"):
                return None
            # Chained and _has levels are held to the subscriber's access too: criteria never probe past it.
            search = parse_criteria(body["criteria"], Scope(self.base, access.constraints))
            channel = body["channel"]
            check_channel(channel)
            kind = channel["type"]
            return Active(
                id=version.id,
                version=version.version,
                type=search.type,
                where=search.where + access.constraints(search.type, "r"),
                channel=kind,
                endpoint=email_address(channel["endpoint"]) if kind == EMAIL else channel["endpoint"],  # type: ignore[arg-type]
                payload=channel.get("payload") if kind == REST_HOOK else None,
                headers=tuple(channel.get("header") or ()) if kind == REST_HOOK else (),
                end=subscription_end(body),
            )
        except Exception as exc:  # one bad subscription must not stop the others, nor the write
            log.warning("Subscription/%s version %s is not run: %s", version.id, version.version, exc)
            return None

    async def _evaluate(self, tx: Transaction, version: ResourceVersion, candidates: Iterable[Active]) -> None:
        now = self.clock()
        running = []
        for active in candidates:
            if active.end is not None and active.end <= now:
                await self._turn_off(tx, active)
            else:
                running.append(active)
        if len(running) > 1 and not await _matches(tx, version, (_any(a.where for a in running),)):
            return  # one query answers for all of them when none matches (the usual case)
        for active in running:
            if not await _matches(tx, version, active.where):
                continue
            current = await tx.read_current(TYPE, active.id)
            if current is None or current.version != active.version:  # changed since the list was loaded
                self.changed()
                fresh = self._build(current)
                if fresh is None or fresh.type != version.type or not await _matches(tx, version, fresh.where):
                    continue
                if fresh.end is not None and fresh.end <= now:
                    await self._turn_off(tx, fresh)
                    continue
                active = fresh
            await tx.enqueue(self.notification(active, version, now))
            if self._deliverer is not None:
                self._deliverer.wake()

    async def _turn_off(self, tx: Transaction, active: Active) -> None:
        """R4 Subscription.end: "The time for the server to turn the subscription off" — written in the unit of
        work that first meets it after its end (by the server, not observed)."""
        current = await tx.read_current(TYPE, active.id)
        if current is not None and current.body is not None:
            body = loads(current.body, max_depth=1 << 20)
            if body.get("status") in LIVE:
                await server_write(tx, current, {**body, "status": "off"})
        self.changed()

    def notification(self, active: Active, version: ResourceVersion, now: int) -> OutboxItem:
        """The outbox item of one match. rest-hook without payload: a POST without body to the endpoint; with a
        payload: R4 "the URL is interpreted as the service base, and an update (PUT) is made" with the resource.
        Email: no resource content, only its type and where to read it."""
        reference = f"{version.type}/{version.id}"
        if active.channel == EMAIL:
            link = f"{self.base}/{reference}" if self.base else reference
            done = "créée" if version.version == 1 else "mise à jour"
            text = (
                f"Bonjour,\n\nUne ressource {version.type} correspondant à votre abonnement (Subscription/{active.id}) "
                f"a été {done}.\n\nConsultez-la avec une application autorisée : {link}\n"
            )
            payload: dict = {"to": active.endpoint, "subject": f"Notification : {version.type} {done}", "text": text}
        elif active.payload is None:
            payload = {"url": active.endpoint, "headers": list(active.headers), "body": None}
        else:
            payload = {
                "method": "PUT",
                "url": _under(active.endpoint, reference),
                "headers": list(active.headers),
                "body": version.body,
                "content_type": active.payload,
            }
        payload["subscription"] = active.id
        payload["resource"] = reference  # checked again against the subscriber's access before it is sent
        return OutboxItem(new_id(), active.channel, payload, due=now)

    async def admissible(self, item: OutboxItem) -> bool:
        """At delivery time: the Subscription is still live and its subscriber may still read the resource
        (R4 notifications carry only what the subscriber's token may read, then and now)."""
        subscription, reference = item.payload.get("subscription"), item.payload.get("resource")
        if not isinstance(subscription, str) or not isinstance(reference, str):
            return True  # not a subscription's notification
        current = await self.store.read_current(TYPE, subscription)
        if current is None or current.body is None:
            return False
        body = loads(current.body, max_depth=1 << 20)
        if body.get("status") not in LIVE:
            return False
        type_, _, id_ = reference.partition("/")
        access = await self._access_now(subscriber_access(body))
        return access.may(type_, "r") and await within(self.store, type_, id_, access.constraints(type_))

    async def _access_now(self, access: Access) -> Access:
        """A representative's or delegate's subscription reaches only the people they still represent now (a
        revocation, a refusal or an 18th birthday stops its notifications as it stops their requests)."""
        principal = getattr(access, "principal", None)
        if principal is None or not principal.represented:
            return access
        links = await representatives.links_of(self.store, principal.subject, principal.own_patient)
        return access_for(principal.acting_for(await representatives.held_by(self.store, links, CLOCK.now())))

    # -- the Deliverer side --------------------------------------------------------------------------------

    async def settled(self, item: OutboxItem, delivered: bool, error: str | None, gave_up: bool) -> None:
        """A delivery given up: ``status`` = error and ``error`` = why (the worker's message: no payload, no
        address, no header); the next delivered one: back to active."""
        subscription = item.payload.get("subscription")
        if not isinstance(subscription, str) or not (gave_up or delivered):
            return
        if gave_up:
            reason = (
                f"{to_instant(self.clock())}: {error or 'delivery failed'} (given up after {item.attempts} attempts)"
            )
            changed = await self._set_status(subscription, "error", reason[:_ERROR_LENGTH], ("active", "error"))
        else:
            changed = await self._set_status(subscription, "active", None, ("error",))
        if changed:
            self.changed()

    async def _set_status(self, id_: str, status: str, error: str | None, from_: tuple[str, ...]) -> bool:
        async def work(tx: Transaction) -> bool:
            current = await tx.read_current(TYPE, id_)
            if current is None or current.body is None:
                return False
            body = loads(current.body, max_depth=1 << 20)
            if body.get("status") not in from_ or (body.get("status") == status and error is None):
                return False
            changed = {**body, "status": status}
            if error is not None:
                changed["error"] = error
            await server_write(tx, current, changed)
            return True

        return await self.store.transact(work)


async def server_write(tx: Transaction, current: ResourceVersion, body: dict) -> ResourceVersion:
    """A new version of a Subscription written by the server itself (status, error): on the store's own
    transaction, so neither checked against a caller nor shown to observers; the recorded subscriber kept."""
    last_updated = max(now_us(), current.last_updated + 1000)
    stamped = stamp(body, current.id, current.version + 1, last_updated)
    version = ResourceVersion(current.type, current.id, current.version + 1, last_updated, "PUT", dumps(stamped))
    await tx.put(version, index_entries(stamped))
    return version


async def _matches(tx: Transaction, version: ResourceVersion, where: tuple[Condition, ...]) -> bool:
    return bool(await tx.find_ids(Search(version.type, (IdIn((version.id,)), *where)), 1))


def _any(alternatives: Iterable[tuple[Condition, ...]]) -> Condition:
    return AnyOf(tuple(w[0] if len(w) == 1 else AllOf(w) for w in alternatives))


def _under(base: str, reference: str) -> str:
    """``[endpoint]/Type/id`` (a query string of the endpoint kept after the path)."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{reference}"))

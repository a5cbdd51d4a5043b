"""Closure, reopening and destruction of a person's space (docs/lifecycle.md).

Closing keeps the record, out of every professional's reach (the access policy reads the state), until
``retain_until``; the person may reopen it before then. Destruction removes every version of everything of
the record from the store, as if it had never been written (``Transaction.purge``, in batches, each in the
store's own unit of work), then traces itself with an AuditEvent that names nobody. It runs at once when the
person asks for deletion, else when the retention period is over (``destroy_due``, called by the sweep).

A destruction is resumable: the Patient is marked closed (``patient-deletion``, due yesterday) before anything
is removed and is itself removed last, so a destruction interrupted half-way is found and finished by the
next ``destroy_due``; every step only removes what is still there.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from ..audit.events import PATIENT_RECORD, Access, Actor, build_audit_event
from ..audit.purge import operator_account
from ..auth import throttle
from ..auth.passwords import verify_password
from ..auth.state import AuthState
from ..fhirjson import loads
from ..instant import now_us
from ..interactions.crud import create_in
from ..notify.subscriptions import SUBSCRIBER_EXTENSION
from ..policy.spaces import owners
from ..search.compartments import compartment_condition, definitions
from ..search.patients import patients_of
from ..store import HistoryQuery, ResourceVersion, Store, Transaction
from ..store.base import encode_payload
from ..store.query import Entry, Search
from ..validation import validate_resource
from . import enrolment, status
from .status import Space

REQUEST, DELETION = "patient-request", "patient-deletion"  # the closure reasons a person gives
RETENTION = "retention"  # a destruction because the legal retention period is over
BATCH = 500  # resources removed per unit of work (and ids per query)
#: The auth-state document linking a closed space to the account that closed it (its id: the Patient id), so a
#: destruction at the end of the retention period also removes the account.
ACCOUNT_LINK = "space-account"
#: Where a destruction run by the server itself (the sweep) says it happened, when no base URL is given.
SERVER = "urn:fhir-server"
OK, WRONG, LOCKED = "ok", "wrong", "locked"


# --- the state changes --------------------------------------------------------------------------------------


def closed(space: Space | None, now: datetime, retention_days: int, reason: str = REQUEST) -> Space:
    """``space`` closed at ``now``, kept ``retention_days`` days (a Patient outside the lifecycle enters it)."""
    current = space.effective(now) if space is not None else Space(status=status.CREATED)
    retain = (now.date() + timedelta(days=retention_days)).isoformat()
    return replace(
        current, status=status.CLOSED, closed=status.instant(now), closure_reason=reason, retain_until=retain
    )


def marked_for_deletion(space: Space | None, now: datetime) -> Space:
    """Closed for deletion, due since yesterday: what ``destroy_due`` finishes if the destruction stops."""
    return replace(closed(space, now, 0, DELETION), retain_until=(now.date() - timedelta(days=1)).isoformat())


def reopened(space: Space) -> Space:
    """Open again: ``active`` if the person had activated it, else ``created``; the closure forgotten."""
    state = status.ACTIVE if space.activated else status.CREATED
    return replace(space, status=state, closed=None, closure_reason=None, retain_until=None)


def reopenable(space: Space | None) -> bool:
    """Only a closure the person asked (not a death, not a destruction under way) is undone by them."""
    return space is not None and space.status == status.CLOSED and space.closure_reason in (None, REQUEST)


def is_due(space: Space, today: date) -> bool:
    if space.status != status.CLOSED or not space.retain_until:
        return False
    try:
        return date.fromisoformat(space.retain_until) < today
    except ValueError:  # a partial or malformed date: never destroy on a guess
        return False


# --- the person's password (synchronous: the auth state runs in a worker thread) -------------------------------


def _counter(username: str) -> str:
    return f"space-close:user:{username.lower()}"


def check_password(accounts: AuthState, username: str, fhir_user: str, password: str) -> str:
    """OK, WRONG or LOCKED (too many failures within the login throttle's window). The account must be the one
    whose token asks (``sub``) and belong to ``fhir_user``; which of these failed is never told."""
    now = time.time()
    key = _counter(username)
    if accounts.count(key, now) >= throttle.USER_LIMIT:
        return LOCKED
    doc = accounts.get_user(username)
    stored = doc.get("password") if doc is not None and doc.get("fhir_user") == fhir_user else None
    if verify_password(password, stored):  # as slow for an unknown account: no oracle by timing
        accounts.reset(key)
        return OK
    accounts.increment(key, now + throttle.WINDOW, now)
    return WRONG


def remember_account(accounts: AuthState, patient_id: str, username: str, due: date) -> None:
    """Link the closed space to its account until a month after its destruction is due (the sweep runs hourly)."""
    until = datetime.combine(due, datetime.min.time(), UTC).timestamp() + 31 * 86400
    accounts.put_temp(ACCOUNT_LINK, patient_id, {"username": username}, until)


def forget_link(accounts: AuthState, patient_id: str) -> None:
    accounts.delete_temp(ACCOUNT_LINK, patient_id)


def forget_accounts(accounts: AuthState, patient_id: str, usernames: Iterable[str], ins: str | None) -> None:
    """Remove the person's account(s), their enrolment documents and what the auth state counts about them."""
    link = accounts.get_temp(ACCOUNT_LINK, patient_id, 0.0)
    names = set(usernames) | ({link["username"]} if link and link.get("username") else set())
    for username in names:
        accounts.delete_user(username)
        accounts.reset(_counter(username))
        accounts.reset(f"login:user:{username.lower()}")  # the login throttle's counter (auth/throttle.py)
    for kind in (enrolment.CODE_KIND, enrolment.IDENTITY_KIND):
        accounts.delete_temp(kind, patient_id)
    for nir in {ins, ins[:13]} if ins else ():  # the activation throttle counts by NIR (with or without its key)
        accounts.reset(enrolment.nir_key(nir))
    forget_link(accounts, patient_id)


# --- destruction --------------------------------------------------------------------------------------------


async def destroy_due(store: Store, now: datetime, *, accounts: AuthState | None = None, base: str = SERVER) -> int:
    """Destroy the closed spaces whose retention period is over (or whose deletion was interrupted); how many.
    ``accounts``: the auth state, so the person's account goes too (the sweep passes it when auth is on)."""
    today = now.date()
    due: list[tuple[str, str]] = []
    query = Search("Patient", (Entry(status.STATUS_PARAM, value=status.CLOSED),))
    after: str | None = None
    while True:
        page = await store.search(query, BATCH, after=after)
        for version in page:
            space = status.read(loads(version.body or b"{}", max_depth=1 << 20))
            if space is not None and is_due(space, today):
                due.append((version.id, DELETION if space.closure_reason == DELETION else RETENTION))
        if len(page) < BATCH:
            break
        after = page[-1].id
    actor = Actor.os_operator(operator_account())
    for patient_id, cause in due:
        await destroy(store, patient_id, cause=cause, actor=actor, base=base, accounts=accounts)
    return len(due)


async def destroy(
    store: Store,
    patient_id: str,
    *,
    cause: str,
    actor: Actor,
    base: str,
    accounts: AuthState | None = None,
    usernames: Sequence[str] = (),
) -> int:
    """Remove the record of ``patient_id`` from the store (and their account from ``accounts``); returns how
    many resources were removed. Order: Binaries (found through the documents), each compartment type, the
    AuditEvents naming what was removed, the person's Subscriptions and outbox items, the account, the Patient
    last; then the AuditEvent of the destruction."""
    started = now_us()
    current = await store.read_current("Patient", patient_id)
    patient = loads(current.body, max_depth=1 << 20) if current is not None and current.body else {}
    removed: list[str] = []
    deleted = await _deleted_members(store, patient_id)
    documents = await _members(store, "DocumentReference", patient_id) + deleted.get("DocumentReference", [])
    total = await _purge(store, "Binary", await _binaries(store, patient_id, documents), removed)
    for type_ in sorted(t for t in definitions()["Patient"] if t != "Patient"):
        ids = await _members(store, type_, patient_id) + deleted.get(type_, [])
        total += await _purge(store, type_, ids, removed)
    total += await _purge(store, "AuditEvent", await _audit_naming(store, removed), removed)
    total += await _purge(store, "Subscription", await _subscriptions(store, patient_id, usernames), removed)
    await _clear_outbox(store, _markers(patient_id, patient, removed))
    if accounts is not None:
        await asyncio.to_thread(forget_accounts, accounts, patient_id, usernames, status.ins(patient))
    total += await _purge(store, "Patient", [patient_id], removed)
    if current is not None:  # no Patient: nothing of it was left to destroy (an earlier run finished)
        await _trace(store, total, cause, actor, base, started)
    return total


async def _purge(store: Store, type_: str, ids: Sequence[str], removed: list[str]) -> int:
    found = 0
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), BATCH):
        chunk = unique[start : start + BATCH]
        found += await store.transact(lambda tx, chunk=chunk: tx.purge(type_, chunk))
        removed += [f"{type_}/{id_}" for id_ in chunk]
    return found


def _owned(version: ResourceVersion, patient_id: str) -> bool:
    """In this record: the resource's owner reference names the patient (or it has none, and only another
    compartment link names them). A document about another patient that this person authored stays theirs."""
    found = owners(version)
    return not found or patient_id in found


async def _pages(store: Store, query: Search) -> list[ResourceVersion]:
    out: list[ResourceVersion] = []
    after: str | None = None
    while True:
        page = await store.search(query, BATCH, after=after)
        out += page
        if len(page) < BATCH:
            return out
        after = page[-1].id


async def _members(store: Store, type_: str, patient_id: str) -> list[str]:
    """The live ``type_`` resources of the record."""
    query = Search(type_, (compartment_condition("Patient", patient_id, type_),))
    return [v.id for v in await _pages(store, query) if _owned(v, patient_id)]


async def _deleted_members(store: Store, patient_id: str) -> dict[str, list[str]]:
    """Resources deleted earlier whose older versions belong to the record: their index entries are gone, so
    they are found in the history (one pass per compartment type; only bodies naming the patient are read)."""
    needle = f'Patient/{patient_id}"'.encode()
    found: dict[str, list[str]] = {}
    for type_ in sorted(t for t in definitions()["Patient"] if t != "Patient"):
        candidates: set[str] = set()
        async for page in _history(store, type_):
            candidates |= {v.id for v in page if v.body and needle in v.body and _names(v, patient_id)}
        for id_ in sorted(candidates):
            now = await store.read_current(type_, id_)
            if now is not None and now.deleted:
                found.setdefault(type_, []).append(id_)
    return found


def _names(version: ResourceVersion, patient_id: str) -> bool:
    body = loads(version.body or b"{}", max_depth=1 << 20)
    return patient_id in patients_of(body) and _owned(version, patient_id)


async def _history(store: Store, type_: str) -> AsyncIterator[list[ResourceVersion]]:
    """Every version of ``type_``, newest first, a page at a time (not all in memory)."""
    before: tuple[int, str, str, int] | None = None
    while True:
        page = await store.history(HistoryQuery(type=type_, before=before, limit=1000))
        yield page
        if len(page) < 1000:
            return
        last = page[-1]
        before = (last.last_updated, last.type, last.id, last.version)


async def _binaries(store: Store, patient_id: str, documents: Sequence[str]) -> list[str]:
    """Binaries whose securityContext is the Patient or one of their documents, and those the documents' versions
    point at (``content.attachment.url``), live or deleted."""
    contexts = [f"Patient/{patient_id}", *(f"DocumentReference/{d}" for d in documents)]
    ids: list[str] = []
    for start in range(0, len(contexts), BATCH):
        chunk = tuple(contexts[start : start + BATCH])
        ids += [v.id for v in await _pages(store, Search("Binary", (Entry("securitycontext", value_in=chunk),)))]
    for document in documents:
        for version in await store.history(HistoryQuery(type="DocumentReference", id=document, limit=10_000)):
            ids += _attached(loads(version.body, max_depth=1 << 20)) if version.body else []
    needles = [f'{c}"'.encode() for c in contexts]
    async for page in _history(store, "Binary"):  # deleted Binaries of the record: no index entries left
        ids += [v.id for v in page if v.body and any(n in v.body for n in needles)]
    return ids


def _attached(document: dict) -> list[str]:
    out = []
    for content in document.get("content") or ():
        url = str(((content or {}).get("attachment") or {}).get("url") or "")
        head, _, id_ = url.rpartition("Binary/")
        if id_ and "/" not in id_ and (not head or head.endswith("/")):
            out.append(id_)
    return out


async def _audit_naming(store: Store, removed: Sequence[str]) -> list[str]:
    """AuditEvents whose entities name a removed resource (a refused read of a document, say): the trail keeps
    no reference to what no longer exists."""
    refs = [r for r in removed if not r.startswith("AuditEvent/")]
    ids: list[str] = []
    for start in range(0, len(refs), BATCH):
        chunk = tuple(refs[start : start + BATCH])
        ids += await store.find_ids(Search("AuditEvent", (Entry("entity", value_in=chunk),)), 1_000_000)
    return ids


async def _subscriptions(store: Store, patient_id: str, usernames: Sequence[str]) -> list[str]:
    """The person's Subscriptions: recorded for their token (subscriber claims) or on their record (criteria)."""
    ids = []
    mine = f"Patient/{patient_id}"
    on_record = re.compile(re.escape(mine) + r"(?![A-Za-z0-9\-.])")
    for version in await _pages(store, Search("Subscription", ())):
        body = loads(version.body or b"{}", max_depth=1 << 20)
        claims: dict = {}
        for extension in body.get("extension") or ():
            if isinstance(extension, dict) and extension.get("url") == SUBSCRIBER_EXTENSION:
                try:
                    claims = loads(str(extension.get("valueString") or "{}").encode())
                except ValueError:
                    claims = {}
        if not isinstance(claims, dict):
            claims = {}
        by_person = claims.get("fhirUser") == mine or claims.get("patient") == patient_id
        by_person = by_person or claims.get("sub") in usernames
        if by_person or on_record.search(str(body.get("criteria") or "")):
            ids.append(version.id)
    return ids


def _markers(patient_id: str, patient: dict, removed: Sequence[str]) -> list[bytes]:
    """What an outbox item of the person carries: their reference, their email addresses, a link to one of their
    notifications."""
    found = [f"Patient/{patient_id}".encode()]
    for telecom in patient.get("telecom") or ():
        if isinstance(telecom, dict) and telecom.get("system") == "email" and telecom.get("value"):
            found.append(str(telecom["value"]).encode())
    found += [f"/{r}".encode() for r in removed if r.startswith("Communication/")]
    return found


async def _clear_outbox(store: Store, markers: Sequence[bytes]) -> None:
    """Drop the notifications still waiting to leave for the person (settled as done: the outbox deletes it)."""
    try:
        items = await store.outbox_items()
    except NotImplementedError:  # a store without an outbox has nothing waiting
        return
    for item in items:
        payload = encode_payload(item.payload)
        if any(marker in payload for marker in markers):
            await store.outbox_settle(item.id, delivered=True, attempts=item.attempts)


async def _trace(store: Store, total: int, cause: str, actor: Actor, base: str, started: int) -> None:
    """The destruction's AuditEvent: when, why, how much, by whom (the app or the server), and nothing of whose."""
    event = build_audit_event(
        Access(
            actor=actor,
            interaction="operation",
            operation="destroy",
            event_type=PATIENT_RECORD,
            action="D",
            base=base,
            started=started,
            ended=now_us(),
            description=f"A closed space was destroyed ({cause}): {total} resource(s) removed",
            details=(("destroyed", str(total)), ("cause", cause)),
        )
    )
    validate_resource(event)

    async def write(tx: Transaction) -> None:
        await create_in(tx, "AuditEvent", event)

    await store.transact(write)

"""The person's steps on their space before they have an account, and the automatic creation
(docs/lifecycle.md): opposition (or closure after the deadline) with its proof, activation, a new enrolment
code, the creation of pending spaces whose opposition period is over.

Each transition is one unit of work on the store: the Patient's new state and the AuditEvent naming the
patient (never the code nor the card number). The person proves who they are with the identifiers of the
real service — NIR, Vitale card serial number and the enrolment code (or their birth date for a new code or
the proof again) — and every wrong answer is the same refusal (``Refused``), with the same work done
whatever was wrong (an unknown NIR costs the same scrypt check as a known one).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import orjson

from ..audit.events import PATIENT_RECORD, Access, Actor, build_audit_event
from ..audit.trace import AuditTrail
from ..auth.users import User
from ..config import Settings
from ..instant import new_id, now_us
from ..interactions.crud import create_in, update_in
from ..notify.outbox import EMAIL, OutboxItem
from ..policy import codes
from ..policy.codes import INS_NIR
from ..search.parameters import parse
from ..store import ResourceVersion, Store, Transaction
from ..store.query import Search
from . import proof, status
from .clock import CLOCK
from .enrolment import Enrolment

log = logging.getLogger("fhir_server.space")

#: The category of the letters the server writes to a person without an email address (the enrolment code):
#: not the notification-event category, which the policy keeps for the notification centre.
LETTER = codes.SPACE_LETTER
INSURER = "Assurance Maladie - Mon espace santé"
POSTAL = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode", "code": "MAILWRIT", "display": "mail"}
_NIR = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}$")
_BATCH = 200


class Refused(Exception):
    """Wrong identifiers, or a space in a state that does not allow the step: one answer for all."""


class UsernameTaken(Exception):
    pass


# --- identifiers ------------------------------------------------------------------------------------------
def valid_nir(value: str) -> bool:
    """A 15-character NIR whose key (the last two digits) is right; Corsica's 2A/2B count as 19/18."""
    if not _NIR.match(value):
        return False
    department = {"2A": "19", "2B": "18"}.get(value[5:7], value[5:7])
    number = int(value[:5] + department + value[7:13])
    return 97 - number % 97 == int(value[13:])


def by_nir(nir: str) -> Search:
    return parse("Patient", [("identifier", f"{INS_NIR}|{nir}")])


async def find_person(source: Store | Transaction, nir: str) -> ResourceVersion | None:
    """The live Patient with this INS-NIR; None when there is none (or, wrongly, several)."""
    ids = await source.find_ids(by_nir(nir), 2)
    if len(ids) != 1:
        return None
    return await source.read_current("Patient", ids[0])


def body_of(version: ResourceVersion) -> dict:
    assert version.body is not None
    return orjson.loads(version.body)


def contact_email(patient: dict) -> str | None:
    """The person's email (telecom of system email, lowest rank first, not an old one)."""
    found = [t for t in patient.get("telecom") or () if isinstance(t, dict) and t.get("system") == "email"
             and t.get("value") and t.get("use") != "old"]  # fmt: skip
    found.sort(key=lambda t: t.get("rank", 1_000_000))
    return str(found[0]["value"]) if found else None


def display_name(patient: dict) -> str:
    names = [n for n in patient.get("name") or () if isinstance(n, dict)]
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    if name.get("text"):
        return str(name["text"])
    return " ".join([*(name.get("given") or ()), str(name.get("family") or "")]).strip()


def base_of(settings: Settings) -> str:
    """This server's public base URL when no request tells it (command line, background sweep)."""
    if settings.base_url:
        return settings.base_url.rstrip("/")
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


# --- the trace ------------------------------------------------------------------------------------------
#: The server itself (the automatic creation): no token, no operator.
SERVER = Actor(client_id="fhir-server")


def person(patient_id: str) -> Actor:
    return Actor(fhir_user=f"Patient/{patient_id}")


def audit_event(actor: Actor, base: str, operation: str, patient_id: str, description: str, *,
                version: ResourceVersion | None = None, action: str = "U",
                details: tuple[tuple[str, str], ...] = ()) -> dict:  # fmt: skip
    """A lifecycle transition as an AuditEvent (DICOM Patient Record), at the lifecycle clock's time."""
    resources = [f"Patient/{patient_id}/_history/{version.version}"] if version is not None else []
    access = Access(actor, "operation", base, operation=operation, event_type=PATIENT_RECORD, action=action,
                    patients=[patient_id], resources=resources, description=description, details=details,
                    recorded=int(CLOCK.timestamp() * 1_000_000))  # fmt: skip
    event = build_audit_event(access)
    if actor is SERVER:  # the server is the agent: named as the source is, not as a client application
        for agent in event["agent"]:
            agent["who"] = {"identifier": {"system": "urn:ietf:rfc:3986", "value": base}, "display": "fhir-server"}
    return event


async def record(tx: Transaction, events: list[dict]) -> None:
    """Write the events in the transition's unit of work (no listener: these are not notifications)."""
    await AuditTrail(None).put(tx, events)  # type: ignore[arg-type]  (put does not use the store)


# --- the letter with the code ---------------------------------------------------------------------------
def _day(moment: datetime) -> str:
    return moment.strftime("%d/%m/%Y")


def letter(patient: dict, code: str, space: status.Space, base: str, expires: datetime) -> tuple[str, str]:
    """(subject, text) of the message carrying a provisional code: how to activate or object."""
    url = f"{base.rstrip('/')}/auth/space"
    hello = f"Bonjour {display_name(patient)},".replace(" ,", ",")
    if space.status == status.PENDING and space.deadline:
        deadline = _day(datetime.fromisoformat(space.deadline))
        state = (f"Votre espace Mon espace santé sera créé automatiquement le {deadline}, sauf si vous vous y "
                 f"opposez avant cette date.")  # fmt: skip
        state_en = f"Your Mon espace santé space will be created on {deadline} unless you object before then."
    else:
        state = "Votre espace Mon espace santé est créé ; vous pouvez l'activer ou le fermer."
        state_en = "Your Mon espace santé space exists; you may activate it or close it."
    text = (
        f"{hello}\n\n{state}\n\n"
        f"Votre code provisoire : {code} (valable jusqu'au {_day(expires)}, à usage unique).\n\n"
        f"Pour activer votre espace : {url}/activate — votre numéro de sécurité sociale, le numéro de série de "
        f"votre carte Vitale, ce code, puis un identifiant et un mot de passe.\n"
        f"Pour vous opposer à sa création : {url}/oppose — les mêmes trois identifiants ; une attestation "
        f"d'opposition (PDF) vous est remise, et à nouveau sur {url}/opposition-proof.\n"
        f"Pour recevoir un nouveau code : {url}/enrolment-code — numéro de sécurité sociale, numéro de série de "
        f"la carte Vitale et date de naissance.\n\n"
        f"{state_en} Your provisional code is above (single use, valid until {_day(expires)}): activate at "
        f"{url}/activate, object at {url}/oppose, ask for a new code at {url}/enrolment-code.\n"
    )
    return "Mon espace santé : votre code provisoire / your provisional code", text


async def send_code(tx: Transaction, version: ResourceVersion, code: str, space: status.Space, base: str,
                    expires: datetime) -> str:  # fmt: skip
    """Send the code: an outbox email when the person has an email address, else a letter (a Communication
    from the insurer to the patient). Returns the channel: ``email`` or ``letter``."""
    patient = body_of(version)
    subject, text = letter(patient, code, space, base, expires)
    email = contact_email(patient)
    if email:
        await tx.enqueue(OutboxItem(new_id(), EMAIL, {"to": email, "subject": subject, "text": text}, due=now_us()))
        return "email"
    communication = {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": LETTER, "code": "enrolment-code", "display": "Code provisoire"}]}],
        "medium": [{"coding": [POSTAL]}],
        "subject": {"reference": f"Patient/{version.id}"},
        "recipient": [{"reference": f"Patient/{version.id}"}],
        "sender": {"display": INSURER},
        "sent": status.instant(CLOCK.now()),
        "payload": [{"contentString": f"{subject}\n\n{text}"}],
    }
    await create_in(tx, "Communication", communication)
    return "letter"


async def issue_and_send(tx: Transaction, enrolment: Enrolment, version: ResourceVersion, space: status.Space,
                         base: str) -> str:  # fmt: skip
    """A new code for this person (the previous one revoked) and its message; returns the channel."""
    code = await asyncio.to_thread(enrolment.issue, version.id)
    expires = CLOCK.now() + timedelta(days=enrolment.code_days)
    return await send_code(tx, version, code, space, base, expires)


# --- who is asking --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Identified:
    version: ResourceVersion
    patient: dict
    space: status.Space  # as of now (a pending space past its deadline is created)

    @property
    def id(self) -> str:
        return self.version.id


async def identify(store: Store, enrolment: Enrolment, nir: str, serial: str, *, code: str | None = None,
                   birth_date: str | None = None) -> Identified | None:  # fmt: skip
    """The person these identifiers name, or None; every check runs whatever failed before it."""
    found = await find_person(store, nir) if valid_nir(nir) else None
    patient = body_of(found) if found is not None else {}
    patient_id = found.id if found is not None else None
    ok = await asyncio.to_thread(enrolment.card_matches, patient_id, serial)
    if code is not None:
        ok = await asyncio.to_thread(enrolment.check, patient_id, code) and ok
    if birth_date is not None:
        ok = hmac.compare_digest(birth_date.strip().encode(), str(patient.get("birthDate") or "").encode()) and ok
    space = status.read(patient) if found is not None else None
    if not ok or found is None or space is None:
        return None
    return Identified(found, patient, space.effective(CLOCK.now()))


async def _transition(store: Store, who: Identified, allowed: tuple[str, ...], change) -> ResourceVersion:
    """Write ``change(space, now)`` on the Patient if its state (re-read in the unit of work) allows it; the
    AuditEvents ``change`` returns go in the same unit."""

    async def work(tx: Transaction) -> ResourceVersion:
        current = await tx.read_current("Patient", who.id)
        if current is None or current.deleted:
            raise Refused
        patient = body_of(current)
        space = status.read(patient)
        now = CLOCK.now()
        if space is None or space.effective(now).status not in allowed:
            raise Refused
        new_space, describe = change(space.effective(now), now)
        result = await update_in(tx, "Patient", who.id, status.write(patient, new_space), current.version)
        await record(tx, describe(result.version))
        return result.version

    return await store.transact(work)


# --- opposition -------------------------------------------------------------------------------------------
async def oppose(store: Store, enrolment: Enrolment, nir: str, serial: str, code: str, *, settings: Settings,
                 base: str) -> proof.Opposition:  # fmt: skip
    """Object to the space: pending → opposed; once created, the opposition closes it (reason opposition)."""
    who = await identify(store, enrolment, nir, serial, code=code)
    if who is None or who.space.status not in (status.PENDING, status.CREATED):
        raise Refused
    if not await asyncio.to_thread(enrolment.consume, who.id, code):
        raise Refused

    def change(space: status.Space, now: datetime):
        if space.status == status.PENDING:
            new = replace(space, status=status.OPPOSED, opposed=status.instant(now))
            operation, text = "space-oppose", "Opposition à la création de l'espace santé (space not created)"
        else:
            retain = (now + timedelta(days=settings.space_retention_days)).date().isoformat()
            new = replace(space, status=status.CLOSED, closed=status.instant(now), closure_reason="opposition",
                          retain_until=retain)  # fmt: skip
            operation, text = "space-close", "Fermeture de l'espace santé sur opposition (space closed)"
        return new, lambda v: [audit_event(person(who.id), base, operation, who.id, text, version=v)]

    version = await _transition(store, who, (status.PENDING, status.CREATED), change)
    await asyncio.to_thread(enrolment.success, nir)
    return _opposition(version)


def _opposition(version: ResourceVersion) -> proof.Opposition:
    patient = body_of(version)
    space = status.read(patient)
    assert space is not None
    closure = space.status == status.CLOSED
    when = space.closed if closure else space.opposed
    assert when is not None
    return proof.Opposition(patient_id=version.id, name=display_name(patient), ins=status.ins(patient) or "",
                            birth_date=patient.get("birthDate"), when=datetime.fromisoformat(when),
                            closure=closure, retain_until=space.retain_until)  # fmt: skip


def opposition_reference(o: proof.Opposition) -> str:
    return proof.reference(o.patient_id, status.instant(o.when))


async def opposition_proof(store: Store, enrolment: Enrolment, nir: str, serial: str, birth_date: str, *,
                           base: str) -> proof.Opposition:  # fmt: skip
    """The proof again, for an opposed space (or one closed by an opposition); the download is traced."""
    who = await identify(store, enrolment, nir, serial, birth_date=birth_date)
    if who is None:
        raise Refused
    space = who.space
    if not (space.status == status.OPPOSED or (space.status == status.CLOSED and space.closure_reason == "opposition")):
        raise Refused
    text = "Attestation d'opposition téléchargée (proof of opposition downloaded)"
    event = audit_event(person(who.id), base, "space-opposition-proof", who.id, text, action="R")
    await store.transact(lambda tx: record(tx, [event]))
    return _opposition(who.version)


# --- activation --------------------------------------------------------------------------------------------
async def activate(store: Store, enrolment: Enrolment, nir: str, serial: str, code: str, user: User, *,
                   base: str) -> str:  # fmt: skip
    """pending | created → active: the account ``user`` (password and TOTP made by the caller) becomes the
    person's, linked to their Patient; returns the Patient id. ``UsernameTaken`` once the identifiers are
    right and the username is someone else's (the code is then still valid)."""
    who = await identify(store, enrolment, nir, serial, code=code)
    if who is None or who.space.status not in (status.PENDING, status.CREATED):
        raise Refused
    if not await asyncio.to_thread(enrolment.hold_username, user.username):
        raise UsernameTaken
    if not await asyncio.to_thread(enrolment.consume, who.id, code):
        raise Refused

    def change(space: status.Space, now: datetime):
        moment = status.instant(now)
        new = replace(space, status=status.ACTIVE, activated=moment, created=space.created or moment)
        text = "Activation de l'espace santé par la personne (space activated, account created)"
        return new, lambda v: [audit_event(person(who.id), base, "space-activate", who.id, text, version=v)]

    await _transition(store, who, (status.PENDING, status.CREATED), change)
    user.fhir_user = f"Patient/{who.id}"
    await asyncio.to_thread(enrolment.state.put_user, user.to_doc())
    await asyncio.to_thread(enrolment.success, nir)
    return who.id


# --- a new code --------------------------------------------------------------------------------------------
async def renew_code(store: Store, enrolment: Enrolment, nir: str, serial: str, birth_date: str, *,
                     base: str) -> str | None:  # fmt: skip
    """A new code for a pending or created space (the previous one revoked), sent as the first was; the
    channel, or None when the identifiers do not match (the caller answers the same either way)."""
    who = await identify(store, enrolment, nir, serial, birth_date=birth_date)
    if who is None or who.space.status not in (status.PENDING, status.CREATED):
        return None

    async def work(tx: Transaction) -> str:
        current = await tx.read_current("Patient", who.id)
        if current is None or current.deleted:
            raise Refused
        channel = await issue_and_send(tx, enrolment, current, who.space, base)
        text = f"Nouveau code provisoire envoyé (new enrolment code sent by {channel}); the previous one is revoked"
        await record(tx, [audit_event(person(who.id), base, "enrolment-code", who.id, text, action="E",
                                      details=(("channel", channel),))])  # fmt: skip
        return channel

    try:
        return await store.transact(work)
    except Refused:
        return None


# --- automatic creation -----------------------------------------------------------------------------------
async def create_due(store: Store, now: datetime, *, base: str = "http://127.0.0.1:8080") -> int:
    """Pending spaces whose opposition period ended by ``now`` become created (created = the deadline,
    ``Patient.active`` true); how many. Each in its own unit of work, re-checked there (several server
    processes may sweep at once)."""
    query = parse("Patient", [(status.STATUS_PARAM, status.PENDING)])
    created, after = 0, None
    while page := await store.search(query, _BATCH, after):
        after = page[-1].id
        for version in page:
            space = status.read(body_of(version))
            if space is not None and space.effective(now).status == status.CREATED:
                created += await store.transact(lambda tx, v=version: _create_one(tx, v.id, now, base))
    return created


async def _create_one(tx: Transaction, patient_id: str, now: datetime, base: str) -> int:
    current = await tx.read_current("Patient", patient_id)
    if current is None or current.deleted:
        return 0
    patient = body_of(current)
    space = status.read(patient)
    if space is None or space.status != status.PENDING or space.effective(now).status != status.CREATED:
        return 0  # changed since the search (opposed, activated, another sweep)
    result = await update_in(tx, "Patient", patient_id, status.write(patient, space.effective(now)), current.version)
    text = "Création automatique de l'espace santé à la fin de la période d'opposition (space created)"
    await record(tx, [audit_event(SERVER, base, "space-create", patient_id, text, version=result.version)])
    return 1

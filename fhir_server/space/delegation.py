"""Inviting a representative: a delegate (aidant) or a minor's second legal representative; the invitee
accepts or declines; the person (or their legal representative) revokes (docs/lifecycle.md).

The invitation is a pending RelatedPerson (``active`` false, state ``pending``) and a random token: its
SHA-256 is kept in the auth state (kind ``INVITATION``) until it expires, the token itself goes to the invitee
by email through the outbox, in the unit of work that creates the RelatedPerson. Accepting links the
RelatedPerson to an account (created then, or an existing one) and makes it active; declining or revoking makes
it inactive for good. Each transition leaves an AuditEvent naming the patient, in its own unit of work.

Time is ``CLOCK``'s (tests move it); the auth state is synchronous: called from a worker thread.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import orjson
from starlette.concurrency import run_in_threadpool

from ..audit.events import Access, Actor, build_audit_event
from ..errors import FhirError, Issue, forbidden, not_found, unprocessable
from ..instant import new_id, now_us
from ..interactions import crud
from ..notify.outbox import EMAIL, OutboxItem
from ..store import ResourceVersion, Store, Transaction
from . import representatives as rep
from . import status
from .clock import CLOCK, adult_on

if TYPE_CHECKING:
    from ..audit.trace import AuditTrail
    from ..auth.state import AuthState
    from ..security.principal import Principal

INVITATION = "mes-invitation"  # the auth state's kind for invitation tokens
ACCEPT_PATH = "/auth/space/invitations"
T = TypeVar("T")


class InvalidInvitation(Exception):
    """Unknown, expired, already answered or withdrawn: one answer for all (no oracle)."""


@dataclass(frozen=True, slots=True)
class Invite:
    patient: str
    email: str
    name: str | None = None
    rights: str = rep.READ
    kind: str = rep.DELEGATE


@dataclass(frozen=True, slots=True)
class Services:
    """What the transitions write to: the FHIR store, the auth state (tokens, accounts), the audit trail."""

    store: Store
    state: AuthState
    trail: AuditTrail | None
    base: str
    invitation_days: int


def secret_key(token: str) -> str:
    from ..auth.state import secret_id  # auth sits above space: imported on use

    return secret_id(token)


# --- invite ---------------------------------------------------------------------------------------------------


async def invite(services: Services, principal: Principal, invite: Invite) -> tuple[dict, str]:
    """Create the pending RelatedPerson and send the invitation; returns it and the token (for the email only)."""
    _check_authority(principal, invite.patient)
    if invite.kind == rep.LEGAL and invite.patient not in principal.delegating:
        raise forbidden("A minor's second legal representative is invited by the first one")
    now = CLOCK.now()
    expires = now + timedelta(days=services.invitation_days)
    token, rp_id = secrets.token_urlsafe(32), new_id()
    doc = {"related_person": rp_id, "patient": invite.patient}
    # The token exists before the RelatedPerson: a failed unit of work leaves a token that leads nowhere.
    await run_in_threadpool(services.state.put_temp, INVITATION, secret_key(token), doc, expires.timestamp())

    async def work(tx: Transaction) -> ResourceVersion:
        patient = await _patient(tx, invite.patient)
        end = None
        if invite.kind == rep.LEGAL:
            birth = status.birth_date(patient)
            if birth is None or now.date() >= adult_on(birth):
                raise unprocessable("Only a minor has legal representatives: this person is of age")
            if rep.legal_slots_taken(await rep.of_patient(tx, invite.patient), now) >= rep.MAX_LEGAL:
                raise unprocessable(f"A minor has at most {rep.MAX_LEGAL} legal representatives (in place or invited)")
            end = rep.coming_of_age(birth)
        rights = rep.MANAGE if invite.kind == rep.LEGAL else invite.rights
        body = rep.related_person(
            invite.patient, invite.kind, rights, state=rep.PENDING, active=False, end=end, name=invite.name,
            email=invite.email, invited_by=principal.fhir_user, expires=status.instant(expires),
        )  # fmt: skip
        written = (await crud.create_in(tx, "RelatedPerson", body, id_=rp_id)).version
        await tx.enqueue(OutboxItem(new_id(), EMAIL, _email(services.base, invite, token, expires), due=now_us()))
        await _trace(services, tx, Actor.from_principal(principal), "invite-delegate", invite.patient, written,
                     f"invitation ({invite.kind}, {rights}) sent")  # fmt: skip
        return written

    version = await services.store.transact(work)
    return orjson.loads(version.body or b"{}"), token


def _check_authority(principal: Principal, patient: str) -> None:
    """The person themselves, or whoever holds legal authority for them (legal representative, tutor)."""
    if principal.professional is not None or (patient != principal.own_patient and patient not in principal.delegating):
        raise forbidden("Only the person, or their legal representative or tutor, invites and revokes representatives")


async def _patient(tx: Transaction, patient_id: str) -> dict:
    found = await tx.read_current("Patient", patient_id)
    if found is None or found.body is None:
        raise not_found(f"Patient/{patient_id} is not known")
    return orjson.loads(found.body)


#: How the invitee reads each kind and right (French: the service's language).
ROLE_NAMES = {rep.DELEGATE: "aidant(e)", rep.LEGAL: "représentant(e) légal(e)", rep.TUTOR: "tuteur ou tutrice"}
RIGHT_NAMES = {rep.READ: "consulter", rep.MANAGE: "consulter et gérer"}


def _email(base: str, invite: Invite, token: str, expires: datetime) -> dict:
    role = ROLE_NAMES[invite.kind]
    rights = RIGHT_NAMES[rep.MANAGE if invite.kind == rep.LEGAL else invite.rights]
    hello = f"Bonjour {invite.name},\n\n" if invite.name else "Bonjour,\n\n"
    link = f"{base}{ACCEPT_PATH}?token={token}"
    day = expires.date().isoformat()
    text = (
        f"{hello}Une personne titulaire de Mon espace santé vous invite à devenir son/sa {role} : "
        f"vous pourrez {rights} son espace santé. Pour accepter ou refuser, avant le {day} :\n\n{link}\n\n"
        f"Someone invites you to act for them in Mon espace santé. Accept or decline before {day} at the link above."
        "\n\nSi vous n'attendiez pas cette invitation, ignorez ce message.\n"
    )
    return {"to": invite.email, "subject": "Mon espace santé : invitation / invitation", "text": text}


# --- the invitee's answer --------------------------------------------------------------------------------------


async def pending(services: Services, token: str) -> rep.Representation:
    """The pending invitation a token names (unknown, expired, answered or withdrawn: ``InvalidInvitation``)."""
    doc = await run_in_threadpool(services.state.get_temp, INVITATION, secret_key(token), CLOCK.timestamp())
    if doc is None:
        raise InvalidInvitation
    found = await services.store.read_current("RelatedPerson", str(doc.get("related_person")))
    held = rep.parse_representation(orjson.loads(found.body)) if found is not None and found.body else None
    if held is None or not held.pending_at(CLOCK.now()):
        raise InvalidInvitation
    return held


async def consume(services: Services, token: str) -> None:
    """Mark the token used, once (a second answer, even concurrent, is refused)."""
    doc, first = await run_in_threadpool(services.state.take_temp, INVITATION, secret_key(token), CLOCK.timestamp())
    if doc is None or not first:
        raise InvalidInvitation


async def accept(services: Services, held: rep.Representation, username: str, fhir_user: str) -> dict:
    """The RelatedPerson made active and linked to ``username``'s account (the token was consumed)."""
    now = CLOCK.now()

    async def change(body: dict) -> dict:
        identifiers = [*body.get("identifier", ()), {"system": rep.ACCOUNT, "value": username}]
        period = {**body.get("period", {}), "start": status.instant(now)}
        return {**rep.with_state(body, rep.ACCEPTED), "active": True, "identifier": identifiers, "period": period}

    actor = Actor(subject=username, fhir_user=fhir_user)
    return await _transition(services, held, change, actor, "accept-invitation", "invitation accepted")


async def decline(services: Services, held: rep.Representation, reason: str | None) -> dict:
    async def change(body: dict) -> dict:
        return {**rep.with_state(body, rep.DECLINED, reason or "refusée par la personne invitée"), "active": False}

    actor = Actor(fhir_user=f"RelatedPerson/{held.id}")
    return await _transition(services, held, change, actor, "decline-invitation", "invitation declined")


# --- revocation --------------------------------------------------------------------------------------------------


async def revoke(services: Services, principal: Principal, rp_id: str) -> dict:
    """End a representation (or withdraw an invitation) at once: the holder's next request no longer reaches
    the patient, whatever their token says."""
    found = await services.store.read_current("RelatedPerson", rp_id)
    held = rep.parse_representation(orjson.loads(found.body)) if found is not None and found.body else None
    if held is None:
        raise not_found(f"RelatedPerson/{rp_id} is not known, or grants no access")
    _check_authority(principal, held.patient)
    if held.status in (rep.REVOKED, rep.DECLINED):
        raise unprocessable(f"RelatedPerson/{rp_id} is already {held.status}")
    now = CLOCK.now()

    async def change(body: dict) -> dict:
        period = dict(body.get("period") or {})
        end = rep._moment(period.get("end"), end=True)
        if end is None or end > now:
            period["end"] = status.instant(now)
        return {**rep.with_state(body, rep.REVOKED), "active": False, "period": period}

    actor = Actor.from_principal(principal)
    return await _transition(services, held, change, actor, "revoke", "representation revoked")


# --- one transition: read, change, write, trace, in one unit of work -----------------------------------------------


async def _transition(
    services: Services,
    held: rep.Representation,
    change: Callable[[dict], Awaitable[dict]],
    actor: Actor,
    operation: str,
    description: str,
) -> dict:
    async def work(tx: Transaction) -> ResourceVersion:
        current = await tx.read_current("RelatedPerson", held.id)
        if current is None or current.body is None:
            raise not_found(f"RelatedPerson/{held.id} is not known")
        body = await change(orjson.loads(current.body))
        written = (await crud.update_in(tx, "RelatedPerson", held.id, body, current.version)).version
        await _trace(services, tx, actor, operation, held.patient, written, description)
        return written

    version = await services.store.transact(work)
    return orjson.loads(version.body or b"{}")


async def _trace(
    services: Services, tx: Transaction, actor: Actor, operation: str, patient: str, written: ResourceVersion,
    description: str,
) -> None:  # fmt: skip
    if services.trail is None:
        return
    access = Access(
        actor, "operation", services.base, operation=operation, patients=[patient], description=description,
        resources=[f"{written.type}/{written.id}/_history/{written.version}"],
    )  # fmt: skip
    await services.trail.put(tx, [build_audit_event(access)])


def refusal() -> FhirError:
    return FhirError(400, [Issue("invalid", "This invitation is unknown, expired, or already answered")])

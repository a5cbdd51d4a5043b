"""Legal representatives, tutors and delegates (aidants) of a person, as RelatedPerson, and the patients a
user's token may act for (docs/lifecycle.md, "Representatives and delegation").

A RelatedPerson grants access when it carries the ``mes-representation`` extension (profiles/): the kind of
representation (legal-representative | tutor | delegate), the rights (read | manage) and the state of its
invitation; ``patient`` is the represented person, ``period`` when it holds, ``active`` whether it holds at all.
It names the account that uses it by ``identifier``: the server's account (``ACCOUNT`` system, the username),
or the representative's own INS (an insured person linked by the registry before they have an account).

Who may act for whom is decided here and only here (``valid_at``): at token issuance and again on every request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import orjson

from ..interactions import crud
from ..policy.codes import INS_NIR
from ..search.parameters import parse
from ..store import Store, Transaction
from . import status
from .clock import adult_on

REPRESENTATION = "https://github.com/fhir-server/fhir-server/StructureDefinition/mes-representation"
#: The server's user accounts (identifier value: the username).
ACCOUNT = "https://github.com/fhir-server/fhir-server/NamingSystem/account"
V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"

LEGAL, TUTOR, DELEGATE = "legal-representative", "tutor", "delegate"
KINDS = (LEGAL, TUTOR, DELEGATE)
READ, MANAGE = "read", "manage"
RIGHTS = (READ, MANAGE)
PENDING, ACCEPTED, DECLINED, REVOKED = "pending", "accepted", "declined", "revoked"
STATUSES = (PENDING, ACCEPTED, DECLINED, REVOKED)
#: RelatedPerson.relationship per kind. RESPRSN "a party who has legal responsibility for another party" (the
#: autorité parentale, whoever holds it); GUARD "legally empowered with responsibility for the care of a ward"
#: (tutelle); R4's v3-RoleCode has no caregiver code, v3-RoleClass CAREGIVER is the aidant.
RELATIONSHIPS = {
    LEGAL: {"system": V3_ROLE_CODE, "code": "RESPRSN", "display": "responsible party"},
    TUTOR: {"system": V3_ROLE_CODE, "code": "GUARD", "display": "guardian"},
    DELEGATE: {"system": V3_ROLE_CLASS, "code": "CAREGIVER", "display": "caregiver"},
}
MAX_LEGAL = 2  # a minor has at most two legal representatives
MAX_HELD = 200  # relationships one account may hold (a bound on the per-request query)
#: The 18th birthday starts at midnight in France.
PARIS = ZoneInfo("Europe/Paris")


@dataclass(frozen=True, slots=True)
class Representation:
    """One RelatedPerson as the access decision sees it."""

    id: str
    patient: str
    kind: str
    rights: str
    status: str
    active: bool
    start: datetime | None = None
    end: datetime | None = None
    expires: datetime | None = None  # a pending invitation's end
    links: tuple[str, ...] = ()  # ``system|value`` identifiers

    def valid_at(self, now: datetime) -> bool:
        """It lets its holder act for the patient at ``now``."""
        if not self.active or self.status != ACCEPTED:
            return False
        if (self.start is not None and now < self.start) or (self.end is not None and now >= self.end):
            return False
        return self.kind != LEGAL or self.end is not None  # a minor's representation always ends (18 years)

    def pending_at(self, now: datetime) -> bool:
        return self.status == PENDING and self.expires is not None and now < self.expires

    @property
    def manages(self) -> bool:
        return self.rights == MANAGE

    @property
    def delegates(self) -> bool:
        """May invite and revoke others for the patient (the person's own choice, or their legal authority)."""
        return self.kind in (LEGAL, TUTOR)


def link(system: str, value: str) -> str:
    return f"{system}|{value}"


def account_link(username: str) -> str:
    return link(ACCOUNT, username)


def parse_representation(body: dict) -> Representation | None:
    """The representation a RelatedPerson grants; None when it grants none (no extension, no patient)."""
    if body.get("resourceType") != "RelatedPerson":
        return None
    values = _extension(body)
    patient = str((body.get("patient") or {}).get("reference") or "")
    kind, rights = values.get("kind"), values.get("rights")
    if kind not in KINDS or rights not in RIGHTS or not patient.startswith("Patient/"):
        return None
    period = body.get("period") or {}
    return Representation(
        id=str(body.get("id") or ""),
        patient=patient.removeprefix("Patient/"),
        kind=str(kind),
        rights=str(rights),
        status=str(values.get("status") or ACCEPTED),
        active=body.get("active") is True,
        start=_moment(period.get("start")),
        end=_moment(period.get("end"), end=True),
        expires=_moment(values.get("invitationExpires"), end=True),
        links=tuple(
            link(i["system"], i["value"])
            for i in body.get("identifier") or ()
            if isinstance(i, dict) and isinstance(i.get("system"), str) and isinstance(i.get("value"), str)
        ),
    )


def _extension(body: dict) -> dict:
    for ext in body.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == REPRESENTATION:
            return {
                sub.get("url"): next((v for k, v in sub.items() if k.startswith("value")), None)
                for sub in ext.get("extension") or ()
                if isinstance(sub, dict)
            }
    return {}


def grants_access(body: dict | None) -> bool:
    return bool(body) and any(
        isinstance(e, dict) and e.get("url") == REPRESENTATION for e in body.get("extension") or ()
    )


def _moment(value: object, *, end: bool = False) -> datetime | None:
    """A FHIR date or dateTime as an instant; a date alone is its first moment, or (an end) the next day's:
    FHIR periods include their end date."""
    if not isinstance(value, str) or not value:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=1 if end else 0), time(), PARIS)
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def coming_of_age(birth: date) -> str:
    """The instant a minor born on ``birth`` comes of age (midnight, Paris time), as a FHIR dateTime."""
    return status.instant(datetime.combine(adult_on(birth), time(), PARIS))


def related_person(
    patient: str,
    kind: str,
    rights: str,
    *,
    state: str,
    active: bool,
    start: str | None = None,
    end: str | None = None,
    identifiers: Sequence[dict] = (),
    name: str | None = None,
    email: str | None = None,
    invited_by: str | None = None,
    expires: str | None = None,
) -> dict:
    subs: list[dict] = [
        {"url": "kind", "valueCode": kind},
        {"url": "rights", "valueCode": rights},
        {"url": "status", "valueCode": state},
    ]
    if invited_by:
        subs.append({"url": "invitedBy", "valueReference": {"reference": invited_by}})
    if expires:
        subs.append({"url": "invitationExpires", "valueDateTime": expires})
    body: dict = {
        "resourceType": "RelatedPerson",
        "extension": [{"url": REPRESENTATION, "extension": subs}],
        "active": active,
        "patient": {"reference": f"Patient/{patient}"},
        "relationship": [{"coding": [RELATIONSHIPS[kind]]}],
    }
    if identifiers:
        body["identifier"] = list(identifiers)
    if name:
        body["name"] = [{"text": name}]
    if email:
        body["telecom"] = [{"system": "email", "value": email}]
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        body["period"] = period
    return body


def with_state(body: dict, state: str, reason: str | None = None) -> dict:
    """``body`` with its invitation state (and a reason: a refusal's) replaced; a new dict."""
    extensions = []
    for ext in body.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == REPRESENTATION:
            subs = [s for s in ext.get("extension") or () if s.get("url") not in ("status", "statusReason")]
            subs.append({"url": "status", "valueCode": state})
            if reason:
                subs.append({"url": "statusReason", "valueString": reason})
            ext = {**ext, "extension": subs}
        extensions.append(ext)
    return {**body, "extension": extensions}


# --- who may act for whom ----------------------------------------------------------------------------------


def escape(value: str) -> str:
    """A token search value with FHIR's escapes (``\\``, ``,``, ``|``, ``$``)."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


async def held_by(store: Store, links: Iterable[str], now: datetime) -> list[Representation]:
    """The representations valid at ``now`` naming one of ``links`` (``system|value``): one indexed query."""
    values = [f"{escape(s)}|{escape(v)}" for s, _, v in (entry.partition("|") for entry in links)]
    if not values:
        return []
    query = parse("RelatedPerson", [("identifier", ",".join(values)), ("active", "true")])
    found = await store.search(query, MAX_HELD)
    held = (parse_representation(orjson.loads(v.body)) for v in found if v.body is not None)
    return [r for r in held if r is not None and r.valid_at(now)]


async def links_of(store: Store, username: str, own_patient: str | None) -> tuple[str, ...]:
    """What names a user in RelatedPerson.identifier: their account, and the INS of their own Patient."""
    links = [account_link(username)]
    if own_patient:
        found = await store.read_current("Patient", own_patient)
        ins = status.ins(orjson.loads(found.body)) if found is not None and found.body is not None else None
        if ins:
            links.append(link(INS_NIR, ins))
    return tuple(links)


async def of_patient(tx: Transaction, patient: str) -> list[Representation]:
    """Every representation recorded for ``patient`` (in a unit of work)."""
    ids = await tx.find_ids(parse("RelatedPerson", [("patient", f"Patient/{patient}")]), MAX_HELD)
    found = []
    for id_ in ids:
        version = await tx.read_current("RelatedPerson", id_)
        if version is not None and version.body is not None:
            parsed = parse_representation(orjson.loads(version.body))
            if parsed is not None:
                found.append(parsed)
    return found


def legal_slots_taken(recorded: Iterable[Representation], now: datetime) -> int:
    """Legal representatives in place or invited (a pending invitation holds its slot until it expires)."""
    return sum(1 for r in recorded if r.kind == LEGAL and (r.valid_at(now) or r.pending_at(now)))


# --- the registry: the insured person represents their minor dependants --------------------------------------


async def registry_representative(tx: Transaction, dependant: dict, now: datetime) -> None:
    """Called by the registry import, in its unit of work, for each dependant (ayant droit) it creates or
    updates: the insured person who opens the right (``mes-ouvrant-droit``) becomes the legal representative
    of a minor dependant until their 18th birthday. Idempotent: nothing is written when it is in place."""
    insured = _ouvrant_droit(dependant)
    birth = status.birth_date(dependant)
    patient = dependant.get("id")
    if not insured or birth is None or not patient or now.date() >= adult_on(birth):
        return  # an adult dependant's space is their own
    end = coming_of_age(birth)
    for existing in await of_patient(tx, str(patient)):
        if existing.kind == LEGAL and link(INS_NIR, insured) in existing.links:
            return  # already recorded (revoked ones stay revoked: the registry does not override a decision)
    name = await _insured_name(tx, insured)
    body = related_person(
        str(patient), LEGAL, MANAGE, state=ACCEPTED, active=True, start=status.instant(now), end=end,
        identifiers=[{"use": "official", "system": INS_NIR, "value": insured}], name=name,
    )  # fmt: skip
    await crud.create_in(tx, "RelatedPerson", body)


def _ouvrant_droit(patient: dict) -> str | None:
    for ext in patient.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == status.OUVRANT_DROIT:
            value = (ext.get("valueIdentifier") or {}).get("value")
            return str(value) if value else None
    return None


async def _insured_name(tx: Transaction, ins: str) -> str | None:
    ids = await tx.find_ids(parse("Patient", [("identifier", f"{INS_NIR}|{escape(ins)}")]), 1)
    found = await tx.read_current("Patient", ids[0]) if ids else None
    if found is None or found.body is None:
        return None
    names = orjson.loads(found.body).get("name") or []
    first = names[0] if names and isinstance(names[0], dict) else {}
    text = first.get("text") or " ".join([*(first.get("given") or []), first.get("family") or ""]).strip()
    return text or None

"""The lifecycle state of a person's space, carried by their Patient (StructureDefinition ``mes-space``).

States and who moves them (docs/lifecycle.md has the diagram)::

    (registry import) ─► pending ──(opposition)──────────────► opposed
                           │  └──(6 weeks without action)──► created ──(activation)──► active
                           └──(activation)────────────────────────────────────────────► active
    created | active ──(closure)──► closed ──(reopening)──► created | active
    closed ──(retention elapsed, or deletion asked)──► destroyed (nothing of the record is left)

``Patient.active`` is true while the space exists (created, active): what professional software reads
with ``GET Patient?identifier=<INS>`` (PDSm4DMP), with the closure date and reason. A Patient without the
extension is not under the lifecycle (data loaded before it, or outside Mon espace santé): always open.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime

from ..policy.codes import INS_NIR

SPACE = "https://github.com/fhir-server/fhir-server/StructureDefinition/mes-space"
OUVRANT_DROIT = "https://github.com/fhir-server/fhir-server/StructureDefinition/mes-ouvrant-droit"
CLOSURE_REASON = "https://github.com/fhir-server/fhir-server/CodeSystem/mes-space-closure-reason"
#: The search parameter on the state (capability/search-parameters-custom.json: Patient-mes-space-status).
STATUS_PARAM = "mes-space-status"

PENDING, OPPOSED, CREATED, ACTIVE, CLOSED = "pending", "opposed", "created", "active", "closed"
STATES = (PENDING, OPPOSED, CREATED, ACTIVE, CLOSED)
OPEN = frozenset({CREATED, ACTIVE})  # the space exists: professionals feed and (under the policy) read it
#: Why a space was closed (CodeSystem mes-space-closure-reason).
CLOSURE_REASONS = {
    "patient-request": "Fermeture à la demande de la personne",
    "patient-deletion": "Fermeture et suppression à la demande de la personne",
    "opposition": "Opposition à la création",
    "deceased": "Décès",
}

_DATES = ("notified", "deadline", "opposed", "created", "activated", "closed")


@dataclass(frozen=True, slots=True)
class Space:
    """The ``mes-space`` extension, as values (dates are ISO 8601 instants, as FHIR dateTime)."""

    status: str
    notified: str | None = None
    deadline: str | None = None  # end of the opposition period, fixed when the person is notified
    opposed: str | None = None
    created: str | None = None
    activated: str | None = None
    closed: str | None = None
    closure_reason: str | None = None
    retain_until: str | None = None  # a FHIR date: destruction is due after this day

    def effective(self, now: datetime) -> Space:
        """The state at ``now``: a pending space whose opposition period is over is created (the sweep
        writes it down; every decision uses this, so it is right before the sweep runs too)."""
        if self.status == PENDING and self.deadline is not None and now >= datetime.fromisoformat(self.deadline):
            return replace(self, status=CREATED, created=self.deadline)
        return self

    @property
    def open(self) -> bool:
        return self.status in OPEN


def read(patient: dict) -> Space | None:
    """The space of a Patient resource; None when it is not under the lifecycle."""
    for ext in patient.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == SPACE:
            values = {sub.get("url"): _value(sub) for sub in ext.get("extension") or () if isinstance(sub, dict)}
            status = values.get("status")
            if status not in STATES:
                return None
            reason = values.get("closureReason")
            return Space(
                status=status,
                **{name: values.get(name) for name in _DATES},
                closure_reason=reason.get("code") if isinstance(reason, dict) else None,
                retain_until=values.get("retainUntil"),
            )
    return None


def write(patient: dict, space: Space) -> dict:
    """``patient`` with this space (extension replaced, ``active`` set); a new dict."""
    subs: list[dict] = [{"url": "status", "valueCode": space.status}]
    subs += [{"url": name, "valueDateTime": getattr(space, name)} for name in _DATES if getattr(space, name)]
    if space.closure_reason:
        display = CLOSURE_REASONS.get(space.closure_reason)
        coding = {"system": CLOSURE_REASON, "code": space.closure_reason, **({"display": display} if display else {})}
        subs.append({"url": "closureReason", "valueCoding": coding})
    if space.retain_until:
        subs.append({"url": "retainUntil", "valueDate": space.retain_until})
    others = [e for e in patient.get("extension") or () if not (isinstance(e, dict) and e.get("url") == SPACE)]
    return {**patient, "extension": [*others, {"url": SPACE, "extension": subs}], "active": space.open}


def ins(patient: dict) -> str | None:
    """The person's INS-NIR (``Patient.identifier`` of system urn:oid:1.2.250.1.213.1.4.8)."""
    for identifier in patient.get("identifier") or ():
        if isinstance(identifier, dict) and identifier.get("system") == INS_NIR and identifier.get("value"):
            return str(identifier["value"])
    return None


def birth_date(patient: dict) -> date | None:
    try:
        return date.fromisoformat(str(patient.get("birthDate") or ""))
    except ValueError:  # absent, or a partial date (year, year-month): no age to compute
        return None


def instant(moment: datetime) -> str:
    """A FHIR dateTime to the second, with its offset."""
    return moment.isoformat(timespec="seconds")


def _value(sub: dict) -> object:
    return next((v for k, v in sub.items() if k.startswith("value")), None)

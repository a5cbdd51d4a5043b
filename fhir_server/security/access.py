"""From SMART scopes to what a caller may do: ``ScopedAccess`` implements ``interactions.access.Access``.

Data confinement, per grant (http://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):
- ``patient/``: the Patient compartment of the token's ``patient`` (R4 CompartmentDefinition); Binary
  through its ``securityContext`` (the Patient, or a DocumentReference of theirs); types outside the
  compartment (Practitioner, Organization, Medication, …) are shared reference data: readable, not
  writable. No ``patient`` in the token: patient grants reach nothing.
- ``user/``: a patient or guardian user (fhirUser Patient/RelatedPerson) is confined like ``patient/`` to
  the patients they manage; a professional user is not narrowed here (the habilitation-matrix policy
  narrows next).
- ``system/``: not narrowed (backend services of trusted professional software).
Subscriptions are each caller's own: outside ``system/`` grants, a Subscription is reached only by the client
and user that wrote it (its owner tag, set by ``prepare_write``; docs/notifications.md).
Granular criteria (``?category=…``) are parsed by the search engine and ANDed in; grants OR together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..errors import FhirError, forbidden
from ..fhirjson import loads
from ..interactions.access import NOTHING, READ_OR_SEARCH, Access
from ..search.compartments import compartment_condition, definitions
from ..search.indexing import IndexEntry
from ..search.parameters import parse
from ..space import representatives
from ..store import ResourceVersion, Transaction
from ..store.query import AllOf, AnyOf, Condition, Entry, IdIn
from .principal import Principal
from .scopes import ScopeGrant

_PATIENT_USERS = ("Patient", "RelatedPerson")
Filter = tuple[Condition, ...]
#: The ``meta.tag`` system naming who owns a Subscription (the code: ``owner_tag`` of ``ScopedAccess.owner``).
SUBSCRIPTION_OWNER = "https://github.com/fhir-server/fhir-server/CodeSystem/subscription-owner"


def owner_tag(owner: str) -> str:
    """An opaque code for an owner (``client_id|sub``): the tag names no one to whoever reads it."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


class ScopedAccess(Access):
    restricted = True

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self._constraints: dict[tuple[str, str], Filter] = {}
        self._may: dict[tuple[str, str], bool] = {}

    def may(self, type_: str, permission: str) -> bool:
        """Remembered per type and letter: the access object lives as long as its token (authenticate.py)."""
        key = (type_, permission)
        found = self._may.get(key)
        if found is None:
            found = self._may[key] = self._grants_permission(type_, permission)
        return found

    def _grants_permission(self, type_: str, permission: str) -> bool:
        return any(g.covers(type_, permission) for g in self.grants(type_))

    def grants(self, type_: str) -> tuple[ScopeGrant, ...]:
        """The grants that may reach ``type_`` (the policy layer sets some aside)."""
        return self.principal.grants

    def owner(self) -> str:
        return f"{self.principal.client_id}|{self.principal.subject}"

    def sees_everything(self) -> bool:
        # system/ only: any other context is confined to its own Subscriptions
        return any(
            g.type == "*" and {"r", "s"} <= g.permissions and not g.criteria and g.context == "system"
            for g in self.principal.grants
        )

    async def prepare_write(
        self, tx: Transaction, version: ResourceVersion, entries: Sequence[IndexEntry]
    ) -> tuple[ResourceVersion, Sequence[IndexEntry]]:
        """A Subscription is stamped with its owner and the claims it will run under (notify/subscriptions.py)."""
        if version.type == "Subscription" and version.body is not None:
            from ..notify.subscriptions import record_subscriber  # notify sits above security: imported on use

            return record_subscriber(self.principal, self.owner(), version)
        return version, entries

    async def check_write(self, tx: Transaction, version: ResourceVersion) -> None:
        """A RelatedPerson that grants access is the server's to write (invitations, the registry) or a
        backend's (a court's feed of tutors): any other token may only end one (``active`` false)."""
        if version.type == "RelatedPerson" and any(g.context != "system" for g in self.principal.grants):
            await refuse_representation_write(tx, version, self.principal)

    def constraints(self, type_: str, permissions: str = READ_OR_SEARCH) -> Filter:
        key = (type_, permissions)
        found = self._constraints.get(key)
        if found is None:
            found = self._constraints[key] = self._compute(type_, permissions)
        return found

    def _compute(self, type_: str, permissions: str) -> Filter:
        wanted = set(permissions)
        writing = not wanted <= set(READ_OR_SEARCH)
        # a delegate's read-only patients are out of reach only when nothing but a change is asked (a lookup
        # inside a write reads: what they may read but not change then answers 403, not 404)
        changing = not wanted & set(READ_OR_SEARCH)
        alternatives: list[Filter] = []
        for grant in self.grants(type_):
            if grant.type not in ("*", type_) or not grant.permissions & wanted:
                continue
            found = self._grant_filter(grant, type_, writing, changing)
            if found == ():
                return ()  # one unconfined grant: nothing to narrow
            if found is not None:
                alternatives.append(found)
        if not alternatives:
            return NOTHING
        if len(alternatives) == 1:
            return alternatives[0]
        return (AnyOf(tuple(f[0] if len(f) == 1 else AllOf(f) for f in alternatives)),)

    def _grant_filter(self, grant: ScopeGrant, type_: str, writing: bool, changing: bool = False) -> Filter | None:
        """The data one grant reaches for ``type_``; None when it reaches nothing."""
        if type_ == "Subscription" and grant.context != "system":
            confinement: Filter | None = (Entry("_tag", value=owner_tag(self.owner()), system=SUBSCRIPTION_OWNER),)
        else:
            confinement = self._confinement(grant.context, type_, writing, changing)
        if confinement is None or not grant.criteria:
            return confinement
        try:
            criteria = parse(type_, list(grant.criteria)).where
        except FhirError:  # criteria that do not apply to this type narrow it to nothing
            return None
        return (*confinement, *criteria)

    def _unconfined(self, context: str) -> bool:
        return context == "system" or (context == "user" and self.principal.fhir_user_type not in _PATIENT_USERS)

    def _confinement(self, context: str, type_: str, writing: bool, changing: bool = False) -> Filter | None:
        if self._unconfined(context):
            return ()
        patients = self._patients(context)
        if changing and self.principal.read_only:
            patients = tuple(p for p in patients if p not in self.principal.read_only)
        if not patients:
            return None
        return patient_data(patients, type_, writing)

    def _patients(self, context: str) -> tuple[str, ...]:
        principal = self.principal
        if context == "patient":
            return (principal.patient,) if principal.patient else ()
        if principal.managed_patients:
            return principal.managed_patients
        if principal.fhir_user_type == "Patient" and principal.fhir_user:
            return (principal.fhir_user.split("/", 1)[1],)
        return ()


async def refuse_representation_write(tx: Transaction, version: ResourceVersion, principal: Principal) -> None:
    current = await tx.read_current("RelatedPerson", version.id)
    before = loads(current.body) if current is not None and current.body is not None else None
    after = loads(version.body) if version.body is not None else None
    if not representatives.grants_access(before) and not representatives.grants_access(after):
        return  # an ordinary RelatedPerson (next of kin, emergency contact…)
    held = representatives.parse_representation(before) if before is not None else None
    authority = {principal.own_patient, *principal.delegating}
    revoked = after is not None and after.get("active") is False and _same(before, after)  # type: ignore[arg-type]
    if held is not None and revoked and held.patient in authority:
        return  # a revocation by the person (or their legal representative)
    raise forbidden(
        "A RelatedPerson that grants access to a record is written by the server: invite with "
        "Patient/[id]/$invite-delegate, end it with RelatedPerson/[id]/$revoke (or an update setting active to false)"
    )


def _same(before: dict, after: dict) -> bool:
    """Equal but for what an update may change without changing what it grants."""
    ignored = ("meta", "text", "active")
    return {k: v for k, v in before.items() if k not in ignored} == {k: v for k, v in after.items() if k not in ignored}


def patient_data(patients: tuple[str, ...], type_: str, writing: bool) -> Filter | None:
    """The ``type_`` resources that are these patients' data (None: none may be reached)."""
    if type_ == "Patient":  # their own records only (the compartment's ``link`` would add linked ones)
        return (IdIn(patients),)
    if type_ == "Binary":
        conditions = [binary_of(p) for p in patients]
    elif type_ in definitions()["Patient"]:
        conditions = [compartment_condition("Patient", p, type_) for p in patients]
    else:  # not patient data: shared reference resources, readable but not writable by patient tokens
        return None if writing else ()
    return (conditions[0] if len(conditions) == 1 else AnyOf(tuple(conditions)),)


def binary_of(patient: str) -> Condition:
    """A Binary whose securityContext is the patient, one of their DocumentReferences or one of their
    Communications (a message's attachment, docs/messaging.md)."""
    reference = f"Patient/{patient}"
    pairs = [("securitycontext", reference), ("securitycontext:DocumentReference.patient", reference),
             ("securitycontext:Communication.subject", reference)]  # fmt: skip
    return AnyOf(tuple(parse("Binary", [pair]).where[0] for pair in pairs))

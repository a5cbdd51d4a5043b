"""``PolicyAccess``: the SMART scope confinement (``security.access``) ANDed with the Mon espace santé rules.

The rules (``rules.py``) become store conditions per type and permission letter; what a write may contain
or change is checked on the content (``writes.py``). Tokens without a professional or a patient side
(``system/`` backend services) are held to their scopes alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import forbidden
from ..interactions.access import LOOKUP, NOTHING
from ..messaging import messages
from ..record import measures_bmi, origin
from ..search.indexing import IndexEntry
from ..security.access import ScopedAccess
from ..security.principal import Principal
from ..security.scopes import ScopeGrant
from ..store import ResourceVersion, Transaction
from ..store.query import AllOf, AnyOf, Chain, Condition, Entry, Not, Search
from . import codes, deposits, spaces, writes
from .rules import DOCUMENT_TYPES, MESSAGE, PatientSideRules, ProfessionalRules

Filter = tuple[Condition, ...]
_PATIENT_SIDE_USERS = ("Patient", "RelatedPerson")


def access_for(principal: Principal) -> ScopedAccess:
    """The access object of a verified token: the policy applies to professionals and the patient side;
    backend services are held to their scopes, and their deposits follow the patient's settings too."""
    if principal.professional is not None or _patient_side(principal):
        return PolicyAccess(principal)
    return BackendAccess(principal)


class _Deposits:
    """What every write into a patient's record goes through: the patient's deposit settings, the origin
    stamp, the measures' rules, and no data for a space that does not exist (``spaces.py``: checked after the
    access checks, so the refusal tells nothing to a caller who may not write there anyway)."""

    async def prepare_write(
        self, tx: Transaction, version: ResourceVersion, entries: Sequence[IndexEntry]
    ) -> tuple[ResourceVersion, Sequence[IndexEntry]]:
        version, entries = await deposits.apply_defaults(tx, version, entries)
        version, entries = origin.stamp(self.principal, version, entries)  # type: ignore[attr-defined]
        if isinstance(self, PolicyAccess):
            version, entries = await messages.prepare(self, tx, version, entries)
        return await super().prepare_write(tx, version, entries)  # type: ignore[misc] (ScopedAccess: Subscriptions)

    async def check_write(self, tx: Transaction, version: ResourceVersion) -> None:
        await super().check_write(tx, version)  # type: ignore[misc]
        await spaces.refuse_closed(tx, version)
        # The IG's measures, for every token (a device feed's system/ one too): units, no client BMI, the
        # server's BMI kept current. A load or a server without auth is the operator's and keeps what it carries.
        await measures_bmi.on_write(tx, version)


class BackendAccess(_Deposits, ScopedAccess):
    """A ``system/`` token: its scopes, and the patient's deposit settings on what it writes. Messages are
    their sender's and recipients' only: no backend reads (exports) or writes one (docs/messaging.md)."""

    def _compute(self, type_: str, permissions: str) -> Filter:
        scoped = super()._compute(type_, permissions)
        if type_ == "Communication" and scoped != NOTHING:
            return (*scoped, Not(MESSAGE))
        if type_ == "Binary" and scoped != NOTHING:
            return (*scoped, Not(Entry("securitycontext", value_prefix="Communication/")))
        return scoped

    async def check_write(self, tx: Transaction, version: ResourceVersion) -> None:
        if version.type == "Communication" and messages.is_message(messages.body_of(version)):
            raise forbidden("Messages are written by professionals and the patient side, not by a backend service")
        await super().check_write(tx, version)


def require_patient_side(access: object, action: str) -> None:
    """Actions only the patient side takes (its read marks, folders, trash…): professionals and backend
    services do not act for the patient (no principal, auth off: an operator's server)."""
    if getattr(access, "principal", None) is not None and getattr(access, "patient_side", None) is None:
        raise forbidden(f"Only the patient, their representative or an app acting for them {action}")


def _patient_side(principal: Principal) -> bool:
    if principal.fhir_user_type in _PATIENT_SIDE_USERS:
        return True
    return any(g.context == "patient" for g in principal.grants)


def _own_patient(principal: Principal) -> str | None:
    """The caller's own Patient id: their fhirUser, or an app's launch patient when no other user is named."""
    if principal.fhir_user_type == "Patient" and principal.fhir_user:
        return principal.fhir_user.split("/", 1)[1]
    if principal.fhir_user is None:
        return principal.patient
    return None


class PolicyAccess(_Deposits, ScopedAccess):
    def __init__(self, principal: Principal) -> None:
        super().__init__(principal)
        professional = principal.professional
        self.professional = ProfessionalRules(professional, principal.access_mode) if professional else None
        messaging = any(g.type == "Communication" for g in principal.grants)  # named, not through a wildcard
        self.patient_side = None if professional else PatientSideRules(_own_patient(principal), messaging)

    def grants(self, type_: str) -> tuple[ScopeGrant, ...]:
        grants = self.principal.grants
        if self.professional is None or type_ not in DOCUMENT_TYPES:
            return grants
        if not self.principal.professional or not self.principal.professional.profession:
            return ()  # no known profession: the habilitation matrix grants no document type
        # Documents are reached through document scopes only, which the authorization server narrowed to
        # the habilitation matrix: a wildcard grant (user/*.rs) does not reach them.
        return tuple(g for g in grants if g.type == type_)

    def _grants_permission(self, type_: str, permission: str) -> bool:
        if self.professional is not None and self.professional.mode != codes.NORMAL and permission in "cud":
            return False  # an emergency access only reads
        return super()._grants_permission(type_, permission)

    def sees_everything(self) -> bool:
        return False

    def lookup_constraints(self, type_: str) -> Filter:
        return self.constraints(type_, LOOKUP)

    def _compute(self, type_: str, permissions: str) -> Filter:
        scoped = super()._compute(type_, permissions)
        if scoped == NOTHING:
            return NOTHING
        alternatives = [f for letter in dict.fromkeys(permissions) if (f := self._letter(type_, letter)) is not None]
        if not alternatives:
            return NOTHING
        if () in alternatives:
            return scoped
        unique = list(dict.fromkeys(alternatives))
        if len(unique) == 1:
            return scoped + unique[0]
        return (*scoped, AnyOf(tuple(f[0] if len(f) == 1 else AllOf(f) for f in unique)))

    def _letter(self, type_: str, letter: str) -> Filter | None:
        """The policy's conditions for one permission letter (None: that permission reaches nothing)."""
        if type_ == "Binary":
            return self._binary(letter)
        if self.professional is not None:
            rules = self.professional
            if letter in "rs":
                return rules.read(type_)
            return rules.create(type_) if letter == "c" else rules.change(type_)
        assert self.patient_side is not None
        if letter == "d":
            return self.patient_side.delete(type_)
        return self.patient_side.read(type_)

    def _binary(self, letter: str) -> Filter | None:
        """A Binary follows its securityContext: a document the caller may reach with the same permission,
        or the patient's record itself (professionals: under the record's reach)."""
        if letter == "c":
            # A transaction may create the Binary before its DocumentReference: what reads it back is
            # ruled by the document; an emergency access writes nothing.
            return None if self.professional is not None and self.professional.mode != codes.NORMAL else ()
        document = self.constraints("DocumentReference", letter)
        via_document = Chain("securitycontext", Search("DocumentReference", document))
        # a message's attachment: with the copy of the message it belongs to (docs/messaging.md)
        via_message = Chain("securitycontext", Search("Communication", self.constraints("Communication", letter)))
        if self.professional is not None:
            patient = Chain("securitycontext", Search("Patient", self.professional.reach()))
            return (AnyOf((via_document, via_message, patient)),)
        # Patient side: the scope confinement already keeps their own Binaries; a document or message context
        # must be one they may see.
        other_context = Not(
            AnyOf((
                Entry("securitycontext", value_prefix="DocumentReference/"),
                Entry("securitycontext", value_prefix="Communication/"),
            ))
        )  # fmt: skip
        return (AnyOf((other_context, via_document, via_message)),)

    async def check_write(self, tx: Transaction, version: ResourceVersion) -> None:
        await writes.check(self, tx, version)
        await super().check_write(tx, version)

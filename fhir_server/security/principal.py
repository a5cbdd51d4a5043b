"""The authenticated caller, as one object passed downward (the policy layer plugs in here next)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..policy.codes import ACCESS_MODES, NORMAL
from ..policy.professional import Professional
from .scopes import ScopeGrant, parse_scopes

if TYPE_CHECKING:
    from ..space.representatives import Representation

#: The scope a professional asks for an emergency mode with (TRE_R248 codes): ``access-mode/bris_de_glace``.
ACCESS_MODE_SCOPE = "access-mode/"
_PROFESSIONAL_USERS = ("Practitioner", "PractitionerRole")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls and with what authority, from a verified SMART access token.

    ``patient`` is the launch context of ``patient/`` scopes; ``managed_patients`` the Patient ids a
    patient or guardian user may act for (``user/`` scopes); ``fhir_user`` e.g. ``Practitioner/9``.
    ``represented``: those of them the user reaches through a RelatedPerson (claim ``represented``), checked
    again on every request; ``read_only``: those the request may read but not change (a delegate's rights);
    ``delegating``: those for whom it may invite and revoke representatives (docs/lifecycle.md).
    """

    client_id: str
    subject: str
    scope: str
    grants: tuple[ScopeGrant, ...]
    token_id: str = ""
    expires_at: int = 0
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    managed_patients: tuple[str, ...] = ()
    purpose_of_use: tuple[str, ...] = field(default=())
    #: A health professional (from the directory, signed in by the authorization server); None otherwise.
    professional: Professional | None = None
    access_mode: str = NORMAL  # TRE_R248: normal, centre_15, bris_de_glace
    justification: str | None = None  # bris de glace: why (traced, shown to the patient)
    represented: tuple[str, ...] = ()
    read_only: frozenset[str] = frozenset()
    delegating: frozenset[str] = frozenset()

    @classmethod
    def from_claims(cls, claims: dict) -> Principal:
        scope = str(claims.get("scope") or "")
        purpose = claims.get("purpose_of_use") or ()
        return cls(
            client_id=str(claims.get("client_id") or claims.get("sub") or ""),
            subject=str(claims.get("sub") or ""),
            scope=scope,
            grants=parse_scopes(scope),
            token_id=str(claims.get("jti") or ""),
            expires_at=int(claims.get("exp") or 0),
            patient=claims.get("patient") or None,
            encounter=claims.get("encounter") or None,
            fhir_user=claims.get("fhirUser") or None,
            managed_patients=tuple(claims.get("managed_patients") or ()),
            purpose_of_use=(purpose,) if isinstance(purpose, str) else tuple(purpose),
            professional=_professional(claims),
            access_mode=_access_mode(scope),
            justification=claims.get("justification") or None,
            represented=tuple(str(p) for p in claims.get("represented") or ()),
        )

    @property
    def fhir_user_type(self) -> str | None:
        return self.fhir_user.split("/", 1)[0] if self.fhir_user else None

    def acting_for(self, held: Iterable[Representation]) -> Principal:
        """This principal with only the represented patients ``held`` (the relationships valid now) still in
        reach, and the rights they give: what a request of a token acting for others may do."""
        held = list(held)
        valid = {h.patient for h in held}
        represented = set(self.represented)
        managed = tuple(p for p in self.managed_patients if p not in represented or p in valid)
        patient = self.patient if self.patient not in represented or self.patient in valid else None
        managing = {h.patient for h in held if h.manages}
        return replace(
            self,
            managed_patients=managed,
            patient=patient,
            read_only=frozenset(p for p in valid & represented if p not in managing),
            delegating=frozenset(h.patient for h in held if h.delegates),
        )

    @property
    def own_patient(self) -> str | None:
        """The caller's own Patient id (their fhirUser)."""
        return self.fhir_user.split("/", 1)[1] if self.fhir_user_type == "Patient" and self.fhir_user else None


def _professional(claims: dict) -> Professional | None:
    """The ``ps`` claim the authorization server signed; a professional fhirUser without it is still a
    professional, of no known profession (so no document type reaches them)."""
    found = Professional.from_claim(claims.get("ps"))
    if found is not None:
        return found
    fhir_user = str(claims.get("fhirUser") or "")
    kind = fhir_user.split("/", 1)[0]
    if kind not in _PROFESSIONAL_USERS:
        return None
    if kind == "PractitionerRole":
        return Professional(id_nat_ps="", profession="", practitioner="", role=fhir_user)
    return Professional(id_nat_ps="", profession="", practitioner=fhir_user)


def _access_mode(scope: str) -> str:
    """The emergency mode a scope grants (one at most: two are contradictory, so none is honoured)."""
    modes = {s[len(ACCESS_MODE_SCOPE) :] for s in scope.split() if s.startswith(ACCESS_MODE_SCOPE)}
    return modes.pop() if len(modes) == 1 and modes <= set(ACCESS_MODES) else NORMAL

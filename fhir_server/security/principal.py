"""The authenticated caller, as one object passed downward (the policy layer plugs in here next)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .scopes import ScopeGrant, parse_scopes


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls and with what authority, from a verified SMART access token.

    ``patient`` is the launch context of ``patient/`` scopes; ``managed_patients`` the Patient ids a
    patient or guardian user may act for (``user/`` scopes); ``fhir_user`` e.g. ``Practitioner/9``.
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
        )

    @property
    def fhir_user_type(self) -> str | None:
        return self.fhir_user.split("/", 1)[0] if self.fhir_user else None

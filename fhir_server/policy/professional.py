"""Who a health professional (PS) is, read from the server's own directory data (Annuaire Santé shapes).

A token never brings the profession: the authorization server resolves the professional here when it issues
the token (``Practitioner`` by idNatPs or fhirUser, then its ``PractitionerRole``: the profession is the
role's TRE_G15 code) and signs what it found into the token's ``ps`` claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from ..search.parameters import parse
from ..store import Store
from .codes import ID_NAT_PS, PROFESSION_SYSTEMS


class UnknownProfessional(Exception):
    """The directory does not know this professional (or knows no usable role): the RFC's invalid_grant."""


@dataclass(frozen=True, slots=True)
class Professional:
    """A PS as the policy sees them: profession (TRE_G15 code) and the references that name them."""

    id_nat_ps: str
    profession: str
    practitioner: str  # "Practitioner/…"
    role: str | None = None  # "PractitionerRole/…"
    organization: str | None = None  # "Organization/…" of the role

    @property
    def refs(self) -> tuple[str, ...]:
        """What names this PS personally: author, médecin traitant, Consent actor."""
        return tuple(r for r in (self.practitioner, self.role) if r)

    @property
    def refs_with_organization(self) -> tuple[str, ...]:
        """A Consent naming the PS's organisation applies to them too (authorisation or block)."""
        return tuple(r for r in (self.practitioner, self.role, self.organization) if r)

    def to_claim(self) -> dict:
        claim = {"idNatPs": self.id_nat_ps, "profession": self.profession, "practitioner": self.practitioner}
        claim.update({k: v for k, v in (("role", self.role), ("organization", self.organization)) if v})
        return claim

    @classmethod
    def from_claim(cls, claim: object) -> Professional | None:
        if not isinstance(claim, dict) or not all(
            isinstance(claim.get(k), str) for k in ("profession", "practitioner")
        ):
            return None
        return cls(
            id_nat_ps=str(claim.get("idNatPs") or ""),
            profession=claim["profession"],
            practitioner=claim["practitioner"],
            role=claim.get("role") or None,
            organization=claim.get("organization") or None,
        )


async def resolve_professional(
    store: Store, *, id_nat_ps: str | None = None, fhir_user: str | None = None
) -> Professional:
    """The professional an idNatPs or a fhirUser (``Practitioner/…`` or ``PractitionerRole/…``) names.

    A Practitioner with several active roles is ambiguous unless the fhirUser names the role: refused.
    """
    role: dict | None = None
    if fhir_user and fhir_user.startswith("PractitionerRole/"):
        role = await _read(store, "PractitionerRole", fhir_user.split("/", 1)[1])
        if role is None or role.get("active") is False:
            raise UnknownProfessional(f"{fhir_user} is not an active role of the directory")
        practitioner_ref = (role.get("practitioner") or {}).get("reference") or ""
        practitioner = (
            await _read(store, "Practitioner", practitioner_ref.partition("/")[2]) if practitioner_ref else None
        )
    elif fhir_user and fhir_user.startswith("Practitioner/"):
        practitioner = await _read(store, "Practitioner", fhir_user.split("/", 1)[1])
    elif id_nat_ps:
        ids = await store.find_ids(parse("Practitioner", [("identifier", f"{ID_NAT_PS}|{id_nat_ps}")]), 2)
        if len(ids) > 1:
            raise UnknownProfessional(f"several Practitioners have the idNatPs {id_nat_ps}")
        practitioner = await _read(store, "Practitioner", ids[0]) if ids else None
    else:
        raise UnknownProfessional("no professional named (idNatPs or fhirUser)")
    if practitioner is None or practitioner.get("active") is False:
        raise UnknownProfessional("the directory has no active Practitioner for this professional")
    practitioner_ref = f"Practitioner/{practitioner['id']}"
    if role is None:
        role = await _only_role(store, practitioner_ref)
    profession = _profession(role)
    if profession is None:
        raise UnknownProfessional(f"PractitionerRole/{role['id']} carries no TRE_G15 profession code")
    organization = (role.get("organization") or {}).get("reference")
    return Professional(
        id_nat_ps=_id_nat_ps(practitioner) or id_nat_ps or "",
        profession=profession,
        practitioner=practitioner_ref,
        role=f"PractitionerRole/{role['id']}",
        organization=organization
        if isinstance(organization, str) and organization.startswith("Organization/")
        else None,
    )


async def _only_role(store: Store, practitioner_ref: str) -> dict:
    ids = await store.find_ids(parse("PractitionerRole", [("practitioner", practitioner_ref)]), 20)
    roles = [
        r for i in ids if (r := await _read(store, "PractitionerRole", i)) is not None and r.get("active") is not False
    ]
    if not roles:
        raise UnknownProfessional(f"{practitioner_ref} has no active PractitionerRole in the directory")
    if len(roles) > 1:
        raise UnknownProfessional(f"{practitioner_ref} has several roles: name the PractitionerRole")
    return roles[0]


async def _read(store: Store, type_: str, id_: str) -> dict | None:
    found = await store.read_current(type_, id_) if id_ else None
    return None if found is None or found.body is None else orjson.loads(found.body)


def _profession(role: dict) -> str | None:
    for concept in role.get("code") or ():
        for coding in concept.get("coding") or ():
            if coding.get("system") in PROFESSION_SYSTEMS and isinstance(coding.get("code"), str):
                return coding["code"]
    return None


def _id_nat_ps(practitioner: dict) -> str | None:
    for identifier in practitioner.get("identifier") or ():
        if identifier.get("system") == ID_NAT_PS and isinstance(identifier.get("value"), str):
            return identifier["value"]
    return None

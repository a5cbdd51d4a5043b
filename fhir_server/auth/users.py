"""People who sign in: a password (scrypt), an optional TOTP secret, and who they are in FHIR.

``fhir_user`` is the user's own resource (``Patient/123``, ``Practitioner/9``, ``RelatedPerson/4``);
``patients`` are the other records they may act for (children, wards). ``managed_patients`` — what the
access token carries — is the user's own Patient id (if any) followed by those.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from . import totp
from .passwords import hash_password

_FHIR_USER = re.compile(r"^(Patient|Practitioner|PractitionerRole|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# Users who act for patients (themselves or others) get the managed_patients claim.
_PATIENT_SIDE = ("Patient", "RelatedPerson", "Person")


class UserError(ValueError):
    """A user that cannot be created (message for the operator)."""


@dataclass
class User:
    username: str
    password: str  # scrypt hash, never the password
    fhir_user: str | None = None
    patients: list[str] = field(default_factory=list)
    totp_secret: str | None = None
    name: str | None = None

    @classmethod
    def from_doc(cls, doc: dict) -> User:
        return cls(**{k: doc.get(k) for k in cls.__dataclass_fields__ if k in doc})

    def to_doc(self) -> dict:
        return asdict(self)

    @property
    def own_patient(self) -> str | None:
        if self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.removeprefix("Patient/")
        return None

    @property
    def managed_patients(self) -> list[str] | None:
        """Self first, then the managed records; None for practitioners who manage nobody."""
        ids = list(dict.fromkeys([p for p in (self.own_patient, *self.patients) if p]))
        if ids or (self.fhir_user or "").split("/")[0] in _PATIENT_SIDE:
            return ids
        return None


def new_user(
    username: str,
    password: str,
    *,
    fhir_user: str | None,
    patients: list[str] | None = None,
    with_totp: bool = False,
    name: str | None = None,
) -> User:
    if not username or len(username) > 200 or any(c.isspace() for c in username):
        raise UserError("username must be 1-200 characters without spaces")
    if len(password) < 8:
        raise UserError("password must have at least 8 characters")
    if fhir_user is not None and not _FHIR_USER.match(fhir_user):
        raise UserError("--fhir-user must be a reference like Patient/123, Practitioner/9 or RelatedPerson/4")
    for patient in patients or ():
        if not _ID.match(patient):
            raise UserError(f"{patient!r} is not a Patient id")
    return User(
        username=username,
        password=hash_password(password),
        fhir_user=fhir_user,
        patients=list(dict.fromkeys(patients or [])),
        totp_secret=totp.new_secret() if with_totp else None,
        name=name,
    )

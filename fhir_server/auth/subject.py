"""What a user authorized: who they are, for which patient, with which scopes, in which grant family.

Built at consent time, carried by the authorization code and every refresh token of the grant, and read
by the token issuer. A *grant family* is every token descending from one authorization: reusing a code
or a rotated refresh token revokes the whole family.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Subject:
    username: str
    scope: str  # the granted scopes (what the user approved), space-separated
    family: str
    fhir_user: str | None = None
    managed_patients: tuple[str, ...] | None = None
    name: str | None = None
    patient: str | None = None
    encounter: str | None = None
    ehr_launch: bool = False  # the EHR shows its own patient banner
    session: str | None = None  # login session id hash: online_access lives as long as it
    auth_time: int | None = None
    amr: tuple[str, ...] = ()

    def to_doc(self) -> dict:
        doc = asdict(self)
        doc["managed_patients"] = list(self.managed_patients) if self.managed_patients is not None else None
        doc["amr"] = list(self.amr)
        return doc

    @classmethod
    def from_doc(cls, doc: dict) -> Subject:
        fields = {k: doc.get(k) for k in cls.__dataclass_fields__ if k in doc}
        if fields.get("managed_patients") is not None:
            fields["managed_patients"] = tuple(fields["managed_patients"])
        fields["amr"] = tuple(fields.get("amr") or ())
        return cls(**fields)

    # authlib asks the "user" for an id in a few places
    def get_user_id(self) -> str:
        return self.username

"""Issuing and inspecting tokens: the token endpoint's answers, refresh tokens, id_tokens, introspection.

Refresh tokens are opaque random strings, stored by hash with the ``Subject`` of their grant and
rotated at every use (the old one is marked used; presenting it again revokes the whole family).
``offline_access`` → valid ``refresh_token_lifetime`` seconds from each rotation (sliding);
``online_access`` → valid as long as the browser login session that approved it (8 h at most,
ended by logging out), and never longer than ``refresh_token_lifetime``.

Health professionals (``professional_scopes``): a user whose fhirUser is a Practitioner or PractitionerRole gets,
at every issue (code, refresh), the granted scopes narrowed to the habilitation matrix for the profession the
directory gives, and the ``ps`` claim; professional software gets ``issue_professional`` (RFC 7523 grant).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import anyio.from_thread
from authlib.oidc.core.grants.util import create_half_hash

from ..config import Settings
from ..policy.professional import UnknownProfessional
from ..space import representatives
from ..space.clock import CLOCK
from . import scopes as smart
from .clients import Client
from .directory import Professionals, ResolvedProfessional, is_professional_user
from .keys import ALG, KeyRing
from .professional_scopes import ProfessionalToken, professional_token
from .state import SESSION, AuthState, secret_id
from .subject import Subject
from .tokens import LEEWAY, AccessTokenRequest, InvalidToken, mint_access_token, mint_id_token, verify_access_token

if TYPE_CHECKING:
    from ..space.representatives import Representation
    from ..store import Store

ID_TOKEN_LIFETIME = 3600


class TokenIssuer:
    def __init__(
        self,
        settings: Settings,
        state: AuthState,
        keys: KeyRing,
        notify: Callable[[list[str]], None] | None = None,
        professionals: Professionals | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.keys = keys
        self._notify = notify or (lambda jtis: None)  # tells the resource server's cache at once
        self.professionals = professionals or Professionals(settings)

    def revoke_access_token(self, jti: str, exp: float) -> None:
        self.state.revoke_access_token(jti, exp + LEEWAY)
        self._notify([jti])

    def revoke_family(self, family: str) -> None:
        """End a grant: its refresh tokens and the access tokens issued from it."""
        self._notify(self.state.revoke_family(family, time.time() + self.settings.refresh_token_lifetime))

    def issue(self, *, base: str, client: Client, subject: Subject | None, scope: str, refresh: bool) -> dict:
        """The token endpoint's JSON body (RFC 6749 §5.1 plus SMART's context parameters)."""
        now = time.time()
        self.keys.reload_if_stale(now)
        lifetime = self.settings.access_token_lifetime
        issued, represented = self._acting_for(subject)
        request = _access_token_request(base, client, issued, scope, lifetime)
        if represented:  # the resource server checks these again on every request
            request = dataclasses.replace(request, extra={"represented": represented})
        if subject is not None and is_professional_user(subject.fhir_user):
            professional = self._professional_user(subject.fhir_user, scope)
            scope = professional.scope
            request = dataclasses.replace(
                request, scope=scope, purpose_of_use=professional.purpose_of_use, extra=professional.extra
            )
        token, claims = mint_access_token(self.keys, request, now)
        body: dict = {"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": scope}
        if subject is None:
            return body
        self.state.record_access_token(claims["jti"], subject.family, claims["exp"] + LEEWAY)
        if issued is not None and issued.patient:
            body["patient"] = issued.patient
        if subject.encounter:
            body["encounter"] = subject.encounter
        body["need_patient_banner"] = not subject.ehr_launch
        refresh_token = self._refresh_token(client, subject, now) if refresh else None
        if refresh_token:
            body["refresh_token"] = refresh_token
        return body

    def managed_patients(self, username: str, fhir_user: str | None, static: Sequence[str] | None) -> list[str] | None:
        """The patients a patient-side user may act for now: their own and the operator's list (``static``,
        ``User.managed_patients``), then those the RelatedPersons valid now give them (the store is asked from
        this worker thread on the event loop that owns it, as ``Professionals.resolve`` does)."""
        if static is None:
            return None
        store = self.professionals.store
        if store is None:
            return list(static)
        own = fhir_user.removeprefix("Patient/") if fhir_user and fhir_user.startswith("Patient/") else None
        held = anyio.from_thread.run(partial(_held, store, username, own))
        return list(dict.fromkeys([*static, *(h.patient for h in held)]))

    def _acting_for(self, subject: Subject | None) -> tuple[Subject | None, list[str]]:
        """The subject as this token carries it (``managed_patients`` recomputed; a launch patient no longer
        represented dropped) and the patients it reaches through RelatedPersons. The grant's own subject (what
        refresh tokens keep) is unchanged: the next token is computed afresh."""
        if subject is None or subject.managed_patients is None:
            return subject, []
        managed = self.managed_patients(subject.username, subject.fhir_user, subject.managed_patients) or []
        represented = [p for p in managed if p not in subject.managed_patients]
        patient = subject.patient if subject.patient is None or subject.patient in managed else None
        return dataclasses.replace(subject, managed_patients=tuple(managed), patient=patient), represented

    def _professional_user(self, fhir_user: str | None, scope: str) -> ProfessionalToken:
        """A professional user's scopes narrowed to the matrix (code and refresh grants). A fhirUser the directory
        does not know (or with several roles) is no error: such a user just gets no document scope."""
        try:
            resolved: ResolvedProfessional | None = self.professionals.resolve(fhir_user=fhir_user)
        except UnknownProfessional:
            resolved = None
        return professional_token(
            scope,
            resolved,
            self.professionals.matrix,
            lifetime=self.settings.access_token_lifetime,
            contexts=smart.USER_CONTEXTS,  # an app launched with a patient in context keeps its patient/ scopes
        )

    def issue_professional(
        self, *, base: str, client: Client, resolved: ResolvedProfessional, token: ProfessionalToken
    ) -> dict:
        """The token endpoint's body for professional software (RFC 7523 grant): no refresh token, ``sub`` the
        idNatPs, ``fhirUser`` the PractitionerRole."""
        now = time.time()
        self.keys.reload_if_stale(now)
        professional = resolved.professional
        request = AccessTokenRequest(
            client_id=client.client_id,
            scope=token.scope,
            sub=professional.id_nat_ps,
            audience=base,
            lifetime=token.lifetime,
            fhir_user=professional.role or professional.practitioner,
            purpose_of_use=token.purpose_of_use,
            extra=token.extra,
        )
        access_token, _ = mint_access_token(self.keys, request, now)
        body = {"access_token": access_token, "token_type": "Bearer", "expires_in": token.lifetime}
        return {**body, "scope": token.scope}

    def _refresh_token(self, client: Client, subject: Subject, now: float) -> str | None:
        granted = smart.split(subject.scope)
        expires = now + self.settings.refresh_token_lifetime
        if smart.OFFLINE not in granted:
            if smart.ONLINE not in granted or subject.session is None:
                return None
            session = self.state.get_temp(SESSION, subject.session, now)
            if session is None:
                return None
            expires = min(expires, session["expires"])
        token = secrets.token_urlsafe(32)
        doc = {"client_id": client.client_id, "subject": subject.to_doc(), "online": smart.OFFLINE not in granted}
        self.state.put_refresh_token(secret_id(token), subject.family, doc, expires)
        return token

    def id_token(
        self, *, base: str, client: Client, subject: Subject, scope: str, nonce: str | None, access_token: str
    ) -> str:
        """OpenID Connect id_token; ``fhirUser`` is the absolute URL of the user's resource (SMART)."""
        now = int(time.time())
        claims: dict = {
            "iss": base,
            "sub": subject.username,
            "aud": client.client_id,
            "iat": now,
            "exp": now + ID_TOKEN_LIFETIME,
        }
        if subject.auth_time is not None:
            claims["auth_time"] = subject.auth_time
        if subject.amr:
            claims["amr"] = list(subject.amr)
        if nonce:
            claims["nonce"] = nonce
        claims["at_hash"] = create_half_hash(access_token, ALG).decode()  # binds the id_token to the access token
        granted = smart.split(scope)
        if smart.FHIR_USER in granted and subject.fhir_user:
            claims["fhirUser"] = f"{base}/{subject.fhir_user}"
        if smart.PROFILE in granted and subject.name:
            claims["name"] = subject.name
        return mint_id_token(self.keys, claims)

    # --- introspection and revocation
    def find(self, token: str, base: str) -> AccessTokenInfo | RefreshTokenInfo | None:
        """The live token a string is, whatever its kind (hints are only hints, RFC 7009 §2.1)."""
        if token.count(".") == 2:
            try:
                return AccessTokenInfo(verify_access_token(self.keys, token, base), self)
            except InvalidToken:
                return None
        record = self.state.get_refresh_token(secret_id(token))
        return RefreshTokenInfo(record, self) if record is not None else None


async def _held(store: Store, username: str, own_patient: str | None) -> list[Representation]:
    links = await representatives.links_of(store, username, own_patient)
    return await representatives.held_by(store, links, CLOCK.now())


def _access_token_request(
    base: str, client: Client, subject: Subject | None, scope: str, lifetime: int
) -> AccessTokenRequest:
    if subject is None:  # backend service: the client acts for itself
        return AccessTokenRequest(client.client_id, scope, client.client_id, base, lifetime)
    return AccessTokenRequest(
        client_id=client.client_id,
        scope=scope,
        sub=subject.username,
        audience=base,
        lifetime=lifetime,
        patient=subject.patient,
        encounter=subject.encounter,
        fhir_user=subject.fhir_user,
        managed_patients=subject.managed_patients,
    )


@dataclass
class AccessTokenInfo:
    claims: dict
    issuer: TokenIssuer

    def check_client(self, client: Client) -> bool:
        return self.claims["client_id"] == client.client_id

    def get_scope(self) -> str:
        return self.claims["scope"]

    def is_expired(self) -> bool:
        return False  # verify_access_token refused expired tokens already

    def is_revoked(self) -> bool:
        return self.issuer.state.is_revoked(self.claims["jti"])

    def introspection(self) -> dict:
        names = ("scope", "client_id", "sub", "exp", "iat", "iss", "aud", "jti", "patient", "encounter", "fhirUser")
        extra = ("managed_patients", "ps", "purpose_of_use", "justification")
        body = {"active": True, "token_type": "Bearer"}
        body.update({k: self.claims[k] for k in (*names, *extra) if k in self.claims})
        return body

    def revoke(self) -> None:
        self.issuer.revoke_access_token(self.claims["jti"], self.claims["exp"])


@dataclass
class RefreshTokenInfo:
    record: dict
    issuer: TokenIssuer

    @property
    def subject(self) -> Subject:
        return Subject.from_doc(self.record["subject"])

    def check_client(self, client: Client) -> bool:
        return self.record["client_id"] == client.client_id

    def get_scope(self) -> str:
        return self.subject.scope

    def is_expired(self) -> bool:
        return self.record["expires"] <= time.time()

    def is_revoked(self) -> bool:
        return self.record["revoked"] or self.record["used"]

    def introspection(self) -> dict:
        subject = self.subject
        body = {
            "active": True,
            "token_type": "refresh_token",
            "scope": subject.scope,
            "client_id": self.record["client_id"],
            "sub": subject.username,
            "exp": int(self.record["expires"]),
        }
        optional = {"patient": subject.patient, "encounter": subject.encounter, "fhirUser": subject.fhir_user}
        body.update({k: v for k, v in optional.items() if v})
        return body

    def revoke(self) -> None:
        self.issuer.revoke_family(self.record["family"])

"""The professionals' directory as the authorization server reads it: the server's own FHIR store.

A token never brings a profession: when the authorization server issues a token to a health professional (PS) it
looks the PS up here (``policy.professional.resolve_professional``: Practitioner by idNatPs or fhirUser, its
PractitionerRole, the TRE_G15 profession) and reads the role's codes (the Centre-15 regulation role,
``professional_scopes.REGULATION``).

The store is asynchronous and bound to the server's event loop, while authlib runs synchronously in a worker thread
(``routes._oauth_endpoint`` → ``run_in_threadpool``). ``Professionals.resolve`` bridges with
``anyio.from_thread.run``: the lookup runs on the event loop that owns the store (its connections, its read cache),
the worker thread waits for it; the loop stays free meanwhile. The alternative, resolving before entering authlib,
would mean reading the PS out of an assertion (or a code, a refresh token) nobody has verified yet, and
taking codes and refresh tokens twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import anyio.from_thread
import orjson

from ..policy.matrix import HabilitationMatrix, from_settings
from ..policy.professional import Professional, UnknownProfessional, resolve_professional

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import Store

_PROFESSIONAL_USERS = ("Practitioner/", "PractitionerRole/")


def is_professional_user(fhir_user: str | None) -> bool:
    """A user account whose fhirUser is a Practitioner or a PractitionerRole (a professional signing in)."""
    return bool(fhir_user) and fhir_user.startswith(_PROFESSIONAL_USERS)  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True)
class ResolvedProfessional:
    """A PS as the directory knows them, with the (system, code) pairs of their PractitionerRole.code."""

    professional: Professional
    role_codes: frozenset[tuple[str, str]] = frozenset()


async def lookup(store: Store, *, id_nat_ps: str | None = None, fhir_user: str | None = None) -> ResolvedProfessional:
    """The PS an idNatPs or a fhirUser names; ``UnknownProfessional`` when the directory cannot say."""
    professional = await resolve_professional(store, id_nat_ps=id_nat_ps, fhir_user=fhir_user)
    codes: set[tuple[str, str]] = set()
    if professional.role:
        found = await store.read_current("PractitionerRole", professional.role.split("/", 1)[1])
        role = orjson.loads(found.body) if found is not None and found.body is not None else {}
        for concept in role.get("code") or ():
            for coding in concept.get("coding") or ():
                if isinstance(coding.get("system"), str) and isinstance(coding.get("code"), str):
                    codes.add((coding["system"], coding["code"]))
    return ResolvedProfessional(professional, frozenset(codes))


class Professionals:
    """What the authorization server needs about professionals: the directory (the FHIR store the app hands over
    as ``AuthServer.directory``) and the habilitation matrix (``settings.habilitation_matrix``, else the shipped
    file; loaded once)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Store | None = None
        self._matrix: HabilitationMatrix | None = None
        self._lock = threading.Lock()

    @property
    def matrix(self) -> HabilitationMatrix:
        with self._lock:
            if self._matrix is None:
                self._matrix = from_settings(self.settings)
            return self._matrix

    def resolve(self, *, id_nat_ps: str | None = None, fhir_user: str | None = None) -> ResolvedProfessional:
        """``lookup`` from a worker thread of the event loop that owns the store (the token endpoint's)."""
        if self.store is None:
            raise UnknownProfessional("this server has no directory to look professionals up in")
        return anyio.from_thread.run(partial(lookup, self.store, id_nat_ps=id_nat_ps, fhir_user=fhir_user))

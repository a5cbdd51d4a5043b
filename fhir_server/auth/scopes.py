"""SMART scopes (App Launch 2.2 §scopes-and-launch-context): parsing, what a client may get, plain words.

Clinical scopes are ``(patient|user|system)/(Type|*).(perms)[?query]``: SMART v2 permissions are a
subsequence of ``cruds``; SMART v1 ``read`` / ``write`` / ``*`` are accepted and mean ``rs`` / ``cud`` /
``cruds``. A granted scope keeps the form it was requested in (v1 stays v1).

A client is registered with the scopes it may request, wildcards included (``patient/*.rs``); a
requested scope is granted when one registered scope *covers* it (same context, same type or ``*``,
permissions included, no query or the same query). Scopes that are unknown or not covered are dropped,
as OAuth allows (RFC 6749 §3.3): the token response says what was granted.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..policy.codes import BRIS_DE_GLACE, CENTRE_15
from ..security.principal import ACCESS_MODE_SCOPE
from ..security.scopes import parse_scope

OPENID, FHIR_USER, PROFILE = "openid", "fhirUser", "profile"
LAUNCH, LAUNCH_PATIENT, LAUNCH_ENCOUNTER = "launch", "launch/patient", "launch/encounter"
OFFLINE, ONLINE = "offline_access", "online_access"
IDENTITY = (OPENID, FHIR_USER, PROFILE, LAUNCH, LAUNCH_PATIENT, LAUNCH_ENCOUNTER, OFFLINE, ONLINE)
# What the consent page cannot untick: the app could not work without them (they grant no data).
MANDATORY = frozenset({OPENID, FHIR_USER, PROFILE, LAUNCH, LAUNCH_PATIENT, LAUNCH_ENCOUNTER})

USER_CONTEXTS = frozenset({"patient", "user"})  # what an app used by a person may get
SYSTEM_CONTEXTS = frozenset({"system"})  # what a backend service may get
PROFESSIONAL_CONTEXTS = frozenset({"user"})  # what professional software acting for a named PS may get

#: The emergency access modes (TRE_R248) a professional asks for with their data scopes (security.principal reads
#: them back); only clients registered as professional software may request them (docs/auth.md).
ACCESS_MODE_SCOPES = (f"{ACCESS_MODE_SCOPE}{CENTRE_15}", f"{ACCESS_MODE_SCOPE}{BRIS_DE_GLACE}")

# One grammar for the authorization server and the resource server (security.scopes).
parse_clinical = parse_scope


def split(scope: str | None) -> list[str]:
    """A scope string as a list, duplicates dropped, order kept."""
    return list(dict.fromkeys((scope or "").split()))


def join(scopes: Iterable[str]) -> str:
    return " ".join(dict.fromkeys(scopes))


def allowed(requested: Iterable[str], registered: Iterable[str], contexts: frozenset[str]) -> list[str]:
    """The requested scopes a client registered with ``registered`` may get, in the given contexts."""
    registered = list(registered)
    clinical = [c for c in (parse_clinical(s) for s in registered) if c is not None]
    kept = []
    for scope in requested:
        if scope in IDENTITY:
            if scope in registered and (contexts & USER_CONTEXTS):
                kept.append(scope)
            continue
        if scope in ACCESS_MODE_SCOPES:
            if scope in registered and "user" in contexts:
                kept.append(scope)
            continue
        wanted = parse_clinical(scope)
        if wanted is not None and wanted.context in contexts and any(c.includes(wanted) for c in clinical):
            kept.append(scope)
    return kept


def is_subset(requested: Iterable[str], granted: Iterable[str]) -> bool:
    """Refresh may narrow, never widen: each requested scope must be covered by a granted one."""
    granted = list(granted)
    clinical = [c for c in (parse_clinical(s) for s in granted) if c is not None]
    for scope in requested:
        if scope in granted:
            continue
        wanted = parse_clinical(scope)
        if wanted is None or not any(c.includes(wanted) for c in clinical):
            return False
    return True


SUPPORTED = [
    *IDENTITY,
    "patient/*.cruds",
    "patient/*.rs",
    "user/*.cruds",
    "user/*.rs",
    "system/*.cruds",
    "system/*.rs",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
    *ACCESS_MODE_SCOPES,
]

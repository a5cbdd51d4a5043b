"""A health professional's token: the requested scopes narrowed to the habilitation matrix, the access mode, the
claims the resource server reads (``security.principal``).

One place for the three ways a PS gets a token (the RFC 7523 grant of professional software, the authorization code
flow of a professional user, ``fhir-server token --ps``):

- **Document scopes** stand in for the matrix (``policy.matrix.document_scope``): each requested grant that covers
  DocumentReference (type ``*`` or ``DocumentReference``) brings the matrix's SMART v2 granular scope for the PS's
  profession (``user/DocumentReference.rs?type:not=ATTEST-RESID`` for a médecin, a ``type=`` allow-list for a
  restricted profession), with the request's own criteria ANDed in; a grant that covers Binary brings
  ``<context>/Binary.<letters>``: the resource server already confines a Binary to the documents the token may
  read (its securityContext, through the DocumentReference scope above), so the Binary scope does not repeat the
  matrix criteria (they would double an allow-list token and shut out Binaries whose securityContext is the patient
  record). A profession the matrix does not know, or an unknown PS, gets neither. Wildcards stay as requested:
  for a professional, the resource server lets only explicit document scopes reach DocumentReference/Binary.
- **Other clinical scopes** stay as requested, in the contexts the flow allows (``user/`` only for professional
  software: a ``patient/`` or ``system/`` scope there is ``ScopeError``, i.e. invalid_scope).
- **Emergency modes** (``access-mode/centre_15``, ``access-mode/bris_de_glace``): permissions reduced to ``rs``
  (an emergency access reads only; scopes left with no letter are dropped), the mode's scope added, a lifetime of
  at most one hour. Bris de glace needs a justification, the others refuse one; centre_15 needs the regulation role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from ..policy.codes import BRIS_DE_GLACE, CENTRE_15, NORMAL, PURPOSE_OF_MODE
from ..policy.matrix import HabilitationMatrix
from ..policy.professional import Professional
from ..security.principal import ACCESS_MODE_SCOPE
from ..security.scopes import parse_scope
from . import scopes as smart
from .directory import ResolvedProfessional

EMERGENCY_LIFETIME = 3600  # an emergency token lives at most one hour
MAX_JUSTIFICATION = 1000  # characters of a bris de glace justification
READS = frozenset("rs")
_ORDER = "cruds"
_DOCUMENT, _BINARY = "DocumentReference", "Binary"

#: The Centre-15 regulation role: a PractitionerRole.code coding the directory gives the médecins régulateurs of a
#: SAMU (no TRE_R21-Fonction/TRE_R85 code names medical regulation, so this server defines one), on a role whose
#: profession is médecin (TRE_G15 10).
REGULATION_SYSTEM = "https://github.com/fhir-server/fhir-server/CodeSystem/mes-practitioner-role"
REGULATION_CODE = "regulation-centre-15"
REGULATION = (REGULATION_SYSTEM, REGULATION_CODE)
REGULATOR_PROFESSIONS = frozenset({"10"})


class ScopeError(ValueError):
    """A requested scope this kind of token can never carry (the RFC's invalid_scope)."""


class ModeError(ValueError):
    """An access mode request that cannot be granted; ``error`` is the RFC 6749 code to answer with."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


@dataclass(frozen=True, slots=True)
class ProfessionalToken:
    """What a PS's access token carries beyond the usual claims."""

    scope: str
    lifetime: int
    purpose_of_use: str
    extra: dict = field(default_factory=dict)  # ps, justification


def is_regulator(resolved: ResolvedProfessional) -> bool:
    return resolved.professional.profession in REGULATOR_PROFESSIONS and REGULATION in resolved.role_codes


def requested_mode(requested: str | None) -> str | None:
    """The access mode the ``access-mode/…`` scopes of a request name (None: none); ``ScopeError`` for an unknown
    mode or two different ones."""
    modes = {s[len(ACCESS_MODE_SCOPE) :] for s in smart.split(requested) if s.startswith(ACCESS_MODE_SCOPE)}
    unknown = sorted(m for m in modes if m not in PURPOSE_OF_MODE)
    if unknown:
        raise ScopeError(f"unknown access mode scope: {ACCESS_MODE_SCOPE}{unknown[0]}")
    if len(modes) > 1:
        raise ScopeError("at most one access-mode scope may be requested")
    return modes.pop() if modes else None


def check_justification(mode: str, justification: object) -> str | None:
    """The justification to sign into the token (None but for bris de glace); ``ModeError`` (invalid_request) for
    an unknown mode, bris de glace without a justification, or a justification in another mode."""
    if mode not in PURPOSE_OF_MODE:
        raise ModeError("invalid_request", f"unknown access mode {mode!r} (normal, centre_15, bris_de_glace)")
    if justification is not None and not isinstance(justification, str):
        raise ModeError("invalid_request", "the justification must be a string")
    text = (justification or "").strip()
    if mode == BRIS_DE_GLACE:
        if not text:
            raise ModeError("invalid_request", "bris de glace requires a justification")
        if len(text) > MAX_JUSTIFICATION:
            raise ModeError("invalid_request", f"the justification is longer than {MAX_JUSTIFICATION} characters")
        return text
    if justification is not None:
        raise ModeError("invalid_request", f"a justification is only accepted for {BRIS_DE_GLACE}, not {mode}")
    return None


def check_regulation(mode: str, resolved: ResolvedProfessional | None) -> None:
    """centre_15 needs the regulation role (``ModeError`` invalid_scope otherwise)."""
    if mode == CENTRE_15 and (resolved is None or not is_regulator(resolved)):
        raise ModeError(
            "invalid_scope",
            f"{ACCESS_MODE_SCOPE}{CENTRE_15} requires a physician's (TRE_G15 10) PractitionerRole with the "
            f"regulation role {REGULATION_SYSTEM}|{REGULATION_CODE}",
        )


def narrow(
    requested: str,
    professional: Professional | None,
    matrix: HabilitationMatrix,
    mode: str = NORMAL,
    contexts: frozenset[str] = smart.PROFESSIONAL_CONTEXTS,
) -> str:
    """The scopes granted to ``professional`` for ``requested`` (see the module docstring). Identity scopes
    (openid, fhirUser, …) stay; ``access-mode/…`` scopes are replaced by the one of ``mode``; unknown ones go."""
    emergency = mode != NORMAL
    profession = professional.profession if professional is not None else ""
    documents = bool(profession) and matrix.document_scope(profession, "user", "rs") is not None
    granted: list[str] = []
    for scope in smart.split(requested):
        grant = parse_scope(scope)
        if grant is None:
            if scope in smart.IDENTITY:
                granted.append(scope)
            continue  # access-mode scopes (added back below), unknown and malformed ones
        if grant.context not in contexts:
            raise ScopeError(f"{scope}: a professional's token carries {'/, '.join(sorted(contexts))}/ scopes only")
        permissions = grant.permissions & READS if emergency else grant.permissions
        if not permissions:
            continue  # an emergency access writes nothing
        letters = "".join(c for c in _ORDER if c in permissions)
        query = grant.query
        if grant.type not in (_DOCUMENT, _BINARY):
            if permissions == grant.permissions:
                granted.append(scope)  # as requested (v1 stays v1)
            else:
                granted.append(f"{grant.context}/{grant.type}.{letters}" + (f"?{query}" if query else ""))
        if grant.type in ("*", _DOCUMENT) and documents:
            found = matrix.document_scope(profession, grant.context, letters)
            if found is not None:
                granted.append(_and_query(found, query))
        if grant.type in ("*", _BINARY) and documents:
            granted.append(f"{grant.context}/Binary.{letters}" + (f"?{query}" if query else ""))
    if emergency:
        granted.append(f"{ACCESS_MODE_SCOPE}{mode}")
    return smart.join(granted)


def has_data(scope: str) -> bool:
    """Does a granted scope string carry at least one clinical grant?"""
    return any(parse_scope(s) is not None for s in scope.split())


def professional_token(
    requested: str,
    resolved: ResolvedProfessional | None,
    matrix: HabilitationMatrix,
    *,
    lifetime: int,
    mode: str = NORMAL,
    justification: str | None = None,
    contexts: frozenset[str] = smart.PROFESSIONAL_CONTEXTS,
) -> ProfessionalToken:
    """Scope, lifetime and claims of a PS's token (``check_justification`` and ``check_regulation`` have accepted
    ``mode`` and ``justification``)."""
    professional = resolved.professional if resolved is not None else None
    scope = narrow(requested, professional, matrix, mode, contexts)
    extra: dict = {}
    if professional is not None:
        extra["ps"] = professional.to_claim()
    if mode == BRIS_DE_GLACE and justification:
        extra["justification"] = justification
    if mode != NORMAL:
        lifetime = min(lifetime, EMERGENCY_LIFETIME)
    return ProfessionalToken(scope, lifetime, PURPOSE_OF_MODE[mode], extra)


def _and_query(scope: str, query: str | None) -> str:
    """``scope`` with the criteria of ``query`` ANDed in (repeated search parameters AND)."""
    if not query:
        return scope
    _, _, own = scope.partition("?")
    have = parse_qsl(own, keep_blank_values=True)
    if all(pair in have for pair in parse_qsl(query, keep_blank_values=True)):
        return scope
    return f"{scope}&{query}" if own else f"{scope}?{query}"

"""The trace of the authorization server's token endpoint: every access token issued, and every request
refused, is an AuditEvent (DICOM 110114 *User Authentication*, subtype 110122 *Login*), committed before
the answer. A professional's emergency mode and justification are in its purpose of use, the launch
patient is its patient entity: the patient sees that a professional obtained access to their record.

Never the token, the client's secret or assertion: the token's ``jti`` (agent.policy) names it; a refusal
records the grant type and the RFC 6749 error code, not the description.
"""

from __future__ import annotations

import base64

import orjson

from ..security.principal import Principal
from .events import (
    LOGIN,
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    SUCCESS,
    USER_AUTHENTICATION,
    Access,
    Actor,
    build_audit_event,
)
from .trace import AuditTrail


def _claims(access_token: str) -> dict:
    """The payload of a token this server has just signed (no need to verify its own signature)."""
    try:
        payload = access_token.split(".")[1]
        return orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return {}


def token_event(base: str, form: dict[str, list[str]], status: int, body: object, address: str | None) -> dict:
    grant = (form.get("grant_type") or [""])[0][:100]
    answer = body if isinstance(body, dict) else {}
    claims = _claims(answer["access_token"]) if status == 200 and isinstance(answer.get("access_token"), str) else {}
    if claims:
        actor = Actor.from_principal(Principal.from_claims(claims))
        outcome, description = SUCCESS, f"access token issued ({grant})"
    else:
        client = (form.get("client_id") or [""])[0][:200] or "unknown client"
        actor = Actor(client_id=client)
        outcome = MINOR_FAILURE if status < 500 else SERIOUS_FAILURE
        error = str(answer.get("error") or status)[:100]
        description = f"token request refused ({grant or 'no grant_type'}): {error}"
    patient = claims.get("patient")
    access = Access(actor, "operation", base, outcome=outcome, event_type=USER_AUTHENTICATION, subtype=LOGIN,
                    action="E", description=description, address=address,
                    patients=[patient] if isinstance(patient, str) and patient else ())  # fmt: skip
    return build_audit_event(access)


async def trace_token_response(
    trail: AuditTrail | None, base: str, form: dict[str, list[str]], status: int, body: object, address: str | None
) -> None:
    if trail is not None:
        await trail.commit([token_event(base, form, status, body, address)])

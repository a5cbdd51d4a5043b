"""The emergency-access hook: every request made in an emergency mode (centre_15, bris_de_glace) is reported
here, with the mode and the justification, before it is served.

The traceability work (AuditEvent, the patient's and the médecin traitant's notifications) subscribes with
``on_emergency_access``; until then the default listener logs who, in which mode, through which client —
never the justification's text nor the data (free text may carry health information).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .professional import Professional

log = logging.getLogger("fhir_server.policy.emergency")


@dataclass(frozen=True, slots=True)
class EmergencyAccess:
    mode: str  # TRE_R248 code
    justification: str | None
    professional: Professional
    client_id: str
    token_id: str
    method: str
    path: str


Listener = Callable[[EmergencyAccess], None]
_listeners: list[Listener] = []


def on_emergency_access(listener: Listener) -> Callable[[], None]:
    """Subscribe; returns the function that unsubscribes."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(event: EmergencyAccess) -> None:
    log.warning(
        "emergency access: mode=%s idNatPs=%s client=%s token=%s %s (justification given: %s)",
        event.mode, event.professional.id_nat_ps or "?", event.client_id, event.token_id, event.method,
        event.justification is not None,
    )  # fmt: skip
    for listener in list(_listeners):
        listener(event)

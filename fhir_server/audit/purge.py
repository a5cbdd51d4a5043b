"""The audit retention purge (``fhir-server audit purge --before DATE``): the only way an AuditEvent leaves
the store. Every version and every index entry of the AuditEvents recorded before DATE
(``AuditEvent.recorded``, search parameter ``date``) is removed, batch by batch, then the purge itself is
traced by a new AuditEvent (who: the operator's OS account; how many; before when).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass

from ..instant import date_range, now_us
from ..interactions.crud import create_in
from ..search.parameters import parse
from ..store import Store, Transaction
from ..validation import validate_resource
from .events import AUDIT_LOG_USED, Access, Actor, build_audit_event

BATCH = 1000  # AuditEvents removed per unit of work


class PurgeRefused(ValueError):
    """A ``--before`` that is not a FHIR date, or lies in the future (it would purge today's trail)."""


@dataclass(frozen=True, slots=True)
class PurgeResult:
    purged: int
    trace_id: str  # the AuditEvent recording the purge


def operator_account() -> str:
    """The OS account running the command (no token, no app: the operator answers for it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container): the number still names it
        return f"uid:{os.getuid()}"


async def purge_before(store: Store, before: str, *, base: str, operator: str | None = None) -> PurgeResult:
    """Remove the AuditEvents recorded before ``before`` (a FHIR date or dateTime: strictly before its start),
    then write the AuditEvent of the purge. Refuses a date after now."""
    bounds = date_range(before)
    if bounds is None:
        raise PurgeRefused(f"--before {before!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime)")
    started = now_us()
    if bounds[0] > started:
        raise PurgeRefused(f"--before {before} is in the future: the purge removes only past events")
    query = parse("AuditEvent", [("date", f"lt{before}")])
    purged = 0
    while True:
        ids = await store.find_ids(query, BATCH)
        if not ids:
            break
        purged += await store.purge("AuditEvent", ids)
    account = operator or operator_account()
    event = build_audit_event(
        Access(
            actor=Actor.os_operator(account),
            interaction="operation",
            operation="purge",
            event_type=AUDIT_LOG_USED,
            action="D",
            base=base,
            started=started,
            ended=now_us(),
            description=f"{purged} AuditEvent(s) recorded before {before} purged by {account}",
            details=(("purged", str(purged)), ("before", before)),
        )
    )
    validate_resource(event)

    async def write(tx: Transaction):
        return await create_in(tx, "AuditEvent", event)

    result = await store.transact(write)
    return PurgeResult(purged, result.version.id)

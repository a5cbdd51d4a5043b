"""The transactional outbox: what must leave the server (an email, a rest-hook call) is written in the same
unit of work as the change that caused it, then delivered by a background worker with retries.

Outbox items are not FHIR resources: no interaction, search, history or export reaches them (they may name
an email address or a subscriber's endpoint). Both stores keep them (SQLite table ``outbox``, MongoDB
collection ``outbox``); ``Transaction.enqueue`` writes one, ``Store.outbox_claim`` leases due ones to a
worker, ``Store.outbox_settle`` records the attempt's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Channels: an email (payload: to, subject, text[, html]) or an HTTP POST (payload: url, headers, body,
#: content_type). ``payload`` may also carry the subscription id the delivery is for ("subscription").
EMAIL = "email"
REST_HOOK = "rest-hook"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: str
    channel: str  # EMAIL | REST_HOOK
    payload: dict = field(default_factory=dict)
    due: int = 0  # µs since the epoch: not attempted before
    attempts: int = 0  # attempts made so far
    last_error: str | None = None
    state: str = "pending"  # pending | failed (gave up; kept for the operator)

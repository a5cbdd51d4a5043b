"""The audit trail (issue 11): AuditEvents shaped like the ANS TdE profile and IHE BALP (``events``), their
retention purge (``purge``). docs/audit.md."""

from __future__ import annotations

from .events import Access, Actor, build_audit_event, outcome_of_status

__all__ = ["Access", "Actor", "build_audit_event", "outcome_of_status"]

"""``Patient/[id]/$close`` and ``Patient/[id]/$reopen``: the person closes their space, or reopens it before
its destruction (fhir_server.space.closure; docs/lifecycle.md)."""

from __future__ import annotations

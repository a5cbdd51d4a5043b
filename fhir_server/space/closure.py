"""Closure, reopening and destruction of a person's space (docs/lifecycle.md)."""

from __future__ import annotations

from datetime import datetime

from ..store import Store


async def destroy_due(store: Store, now: datetime) -> int:
    """Destroy the closed spaces whose retention period is over; how many were destroyed."""
    return 0

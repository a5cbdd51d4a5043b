"""Legal representatives, tutors and delegates (aidants) of a person, as RelatedPerson, and the patients a
user's token may act for (docs/lifecycle.md)."""

from __future__ import annotations

from datetime import datetime

from ..store import Transaction


async def registry_representative(tx: Transaction, dependant: dict, now: datetime) -> None:
    """Called by the registry import, in its unit of work, for each dependant (ayant droit) it creates or
    updates: the insured person who opens the right (``mes-ouvrant-droit``) becomes the legal representative
    of a minor dependant until their 18th birthday."""

"""What every interaction receives: the store and the settings (the principal joins with SMART)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..store import ResourceVersion, Store


@dataclass(frozen=True, slots=True)
class Context:
    store: Store
    settings: Settings


@dataclass(frozen=True, slots=True)
class ResourceResult:
    """The version an interaction produced or found; ``created`` tells 201 from 200."""

    version: ResourceVersion
    created: bool = False

"""What every interaction receives: the store, the settings and the caller's access constraints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import Settings
from ..store import ResourceVersion, Store
from ..store.query import Condition
from ..validation.remote import IN_PROCESS, InProcess
from .access import UNRESTRICTED, Access
from .observers import WriteObserver


def no_constraints(type_: str) -> tuple[Condition, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class Context:
    """``constraints(type)`` yields the conditions the caller's reads are limited to for that type: they
    are ANDed into every store query (matches, totals, includes), never applied after the fact.
    ``access`` answers which interactions are permitted and guards writes (see ``access.py``)."""

    store: Store
    settings: Settings
    constraints: Callable[[str], tuple[Condition, ...]] = no_constraints
    access: Access = UNRESTRICTED
    validator: InProcess = IN_PROCESS  # validates incoming resources (helper processes when configured)
    #: Shown every version written, inside its unit of work (subscriptions; the request's audit trace).
    observers: tuple[WriteObserver, ...] = ()


@dataclass(frozen=True, slots=True)
class ResourceResult:
    """The version an interaction produced or found; ``created`` tells 201 from 200."""

    version: ResourceVersion
    created: bool = False

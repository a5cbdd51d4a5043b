"""The lifecycle's periodic pass: pending spaces past their opposition period are created, closed spaces past
their retention period are destroyed. The server runs it every ``space_sweep_seconds`` (app lifespan);
``fhir-server space sweep`` runs one pass. Reads never wait for it: a pending space past its deadline already
counts as created (``Space.effective``), the sweep writes it down and traces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from ..auth.server import AuthServer
from ..auth.state import AuthState
from ..config import Settings
from ..store import Store
from . import closure, lifecycle
from .clock import CLOCK

log = logging.getLogger("fhir_server.space")


async def sweep(store: Store, settings: Settings, now: datetime, accounts: AuthState | None = None) -> dict:
    """One pass at ``now``: ``{"created": n, "destroyed": m}``. ``accounts``: the auth state, so a destroyed
    person's account and enrolment secrets go with their record."""
    base = lifecycle.base_of(settings)
    created = await lifecycle.create_due(store, now, base=base)
    destroyed = await closure.destroy_due(store, now, accounts=accounts, base=base)
    return {"created": created, "destroyed": destroyed}


class Sweeper:
    """The server's background pass (one per process: each unit of work re-checks, so several agree)."""

    def __init__(self, store: Store, settings: Settings, auth: AuthServer | None) -> None:
        self.store = store
        self.settings = settings
        self.auth = auth  # its state (once started) holds the accounts a destruction removes
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="space-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.space_sweep_seconds)
            try:
                accounts = self.auth.state if self.auth is not None else None
                done = await sweep(self.store, self.settings, CLOCK.now(), accounts)
                if any(done.values()):
                    log.info("space sweep: %(created)d created, %(destroyed)d destroyed", done)
            except Exception:  # a store blip must not end the task: the next pass retries
                log.exception("space sweep failed")

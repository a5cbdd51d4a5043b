"""The outbox's delivery worker: leases due items from the store, hands each to its channel's sender,
records the result (notify/outbox.py).

Success deletes the item; a failure makes it due again after an exponential backoff (30 s, 1 min, 2 min, …
at most 1 h) until ``max_attempts`` attempts have failed (or one failed for good: ``DeliveryError``
``permanent``), when it is kept as ``failed`` for the operator. Listeners (``on_settled``, e.g. the
Subscriptions engine updating ``Subscription.status``) hear of every attempt.

Every uvicorn worker process runs one ``Deliverer``: a claim leases items (their ``due`` moves a minute
ahead), so two workers never send the same item at once; an item whose worker died mid-send is due again
when its lease ends (delivery is at least once). Nothing lives in memory: a new ``Deliverer`` on a
reopened store delivers what the previous one did not.

Logs name an item's id, channel and attempt, never its payload (an email address, a body, a token).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..instant import now_us
from .outbox import EMAIL, REST_HOOK, OutboxItem

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import Store

log = logging.getLogger(__name__)

SECOND = 1_000_000  # µs
BACKOFF_FIRST = 30 * SECOND
BACKOFF_MAX = 3600 * SECOND
LEASE = 60 * SECOND
BATCH = 16  # items claimed and sent concurrently per pass
WAKE_DELAY = 0.02  # seconds between a wake() and the pass it starts

#: Sends one payload; raises (preferably ``DeliveryError``) when it was not delivered.
Sender = Callable[[Mapping[str, Any]], Awaitable[None]]
#: Asked before each send: False withholds the item (removed unsent), e.g. a subscriber who may no longer read
#: the resource it is about.
Admission = Callable[[OutboxItem], Awaitable[bool]]
#: ``(item after this attempt, delivered, error, gave_up)``.
SettledCallback = Callable[[OutboxItem, bool, "str | None", bool], Awaitable[None]]


class DeliveryError(Exception):
    """A delivery that did not happen; ``permanent``: trying again cannot help (give up now). The message is
    stored with the item and may be shown: it must not contain the payload."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def backoff(attempts: int) -> int:
    """µs to wait after the ``attempts``-th failed attempt: 30 s, 1 min, 2 min, 4 min, … at most 1 h."""
    return min(BACKOFF_FIRST * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


class Deliverer:
    def __init__(
        self,
        store: Store,
        senders: Mapping[str, Sender],
        *,
        clock: Callable[[], int] = now_us,
        on_settled: SettledCallback | Iterable[SettledCallback] = (),
        max_attempts: int = 8,
        poll: float = 5.0,
        lease: int = LEASE,
        batch: int = BATCH,
    ) -> None:
        """``senders``: channel → sender; items of other channels stay pending, untouched. ``clock``: µs
        since the epoch. ``poll``: seconds between passes of the background loop. ``lease``: µs an item is
        withheld from other workers while one sends it (a send taking longer is abandoned as failed)."""
        self.store = store
        self.senders = dict(senders)
        self.clock = clock
        self.on_settled: list[SettledCallback] = [on_settled] if callable(on_settled) else list(on_settled)
        self.before_send: list[Admission] = []
        self.max_attempts = max(1, max_attempts)
        self.poll = poll
        self.lease = lease
        self.batch = max(1, batch)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    # -- one pass ----------------------------------------------------------------------------------------

    async def run_once(self, now: int | None = None) -> int:
        """Claim the items due at ``now`` (default: the clock), send them, record each result; returns how
        many were attempted (at most ``batch``)."""
        now = self.clock() if now is None else now
        items = await self.store.outbox_claim(now, now + self.lease, self.batch, channels=list(self.senders))
        if items:
            await asyncio.gather(*(self._deliver(item, now) for item in items))
        return len(items)

    async def _deliver(self, item: OutboxItem, now: int) -> None:
        attempts = item.attempts + 1
        if not await self._admitted(item):
            await self.store.outbox_settle(item.id, delivered=True, attempts=attempts)  # removed, unsent
            log.info("outbox item %s (%s) withheld: no longer admissible", item.id, item.channel)
            return
        error: str | None = None
        permanent = False
        try:
            # Bounded by half the lease: the item must be settled before another worker may take it.
            await asyncio.wait_for(self.senders[item.channel](item.payload), self.lease / SECOND / 2)
        except DeliveryError as exc:
            error, permanent = str(exc) or type(exc).__name__, exc.permanent
        except TimeoutError:
            error = f"{item.channel}: no result within {self.lease / SECOND / 2:g} s"
        except Exception as exc:  # a sender's bug: its message may quote the payload, so only the type
            error = f"{item.channel}: unexpected {type(exc).__name__}"
        delivered = error is None
        gave_up = not delivered and (permanent or attempts >= self.max_attempts)
        due = None if delivered or gave_up else now + backoff(attempts)
        await self.store.outbox_settle(
            item.id, delivered=delivered, attempts=attempts, due=due, error=error, give_up=gave_up
        )
        what = f"outbox item {item.id} ({item.channel}) attempt {attempts}"
        if delivered:
            log.debug("%s: delivered", what)
        elif gave_up:
            log.warning("%s failed, given up: %s", what, error)
        else:
            log.info("%s failed, retried later: %s", what, error)
        settled = replace(
            item,
            attempts=attempts,
            last_error=error,
            due=item.due if due is None else due,
            state="failed" if gave_up else item.state,
        )
        for callback in self.on_settled:
            try:
                await callback(settled, delivered, error, gave_up)
            except Exception as exc:
                log.error("outbox item %s: a settlement listener failed: %s", item.id, type(exc).__name__)

    async def _admitted(self, item: OutboxItem) -> bool:
        for admit in self.before_send:
            try:
                if not await admit(item):
                    return False
            except Exception as exc:  # cannot tell: not now (retried with the item's next pass)
                log.error("outbox item %s: an admission check failed: %s", item.id, type(exc).__name__)
                raise DeliveryError("admission check failed") from None
        return True

    # -- the background loop -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Run a pass now (after a commit that enqueued something); never blocks."""
        self._wake.set()

    async def start(self) -> None:
        if self.running:
            return
        if EMAIL not in self.senders:
            log.warning("email disabled (FHIR_SERVER_SMTP_HOST not set): email notifications stay in the outbox")
        if REST_HOOK not in self.senders:
            log.warning("no rest-hook sender: rest-hook notifications stay in the outbox")
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="outbox-deliverer")

    async def stop(self, grace: float = 5.0) -> None:
        """Let a pass in progress finish (at most ``grace`` seconds), then close the senders."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
            except TimeoutError:
                task.cancel()  # what it was sending stays leased, then due again
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for sender in self.senders.values():
            close = getattr(sender, "aclose", None)
            if close is not None and inspect.iscoroutinefunction(close):
                with contextlib.suppress(Exception):
                    await close()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                while await self.run_once() >= self.batch and not self._stopping:
                    pass  # a full batch: more may be due
            except Exception as exc:
                log.error("outbox delivery pass failed (retried in %g s): %s: %s", self.poll, type(exc).__name__, exc)
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)
                await asyncio.sleep(WAKE_DELAY)  # woken from inside a unit of work: let it commit first


def build_deliverer(store: Store, settings: Settings) -> Deliverer:
    """The server's worker: rest-hooks always, email when ``smtp_host`` is set."""
    from .email import EmailSender
    from .hooks import HookSender

    senders: dict[str, Sender] = {REST_HOOK: HookSender()}
    email = EmailSender.from_settings(settings)
    if email is not None:
        senders[EMAIL] = email
    return Deliverer(store, senders, max_attempts=settings.outbox_max_attempts, poll=settings.outbox_poll_seconds)

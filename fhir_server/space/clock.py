"""The time the space lifecycle runs on: the system clock, moved forward by tests (no sleeping).

One clock for the process (``CLOCK``): every lifecycle decision (opposition deadline, code and invitation
expiry, 18th birthday, retention) reads ``CLOCK.now()``, never ``datetime.now()`` directly. Tests move it
forward and ``reset()`` it after.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta


class Clock:
    def __init__(self) -> None:
        self._offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def today(self) -> date:
        return self.now().date()

    def timestamp(self) -> float:
        return self.now().timestamp()

    def advance(self, **delta: float) -> None:
        """Move this clock forward (``days=43``): what tests do instead of waiting."""
        self._offset += timedelta(**delta)

    def reset(self) -> None:
        self._offset = timedelta()


CLOCK = Clock()


def adult_on(birth_date: date) -> date:
    """The 18th birthday (29 February births come of age on 1 March in non-leap years)."""
    try:
        return birth_date.replace(year=birth_date.year + 18)
    except ValueError:
        return date(birth_date.year + 18, 3, 1)

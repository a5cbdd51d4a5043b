"""Server time: FHIR instants and HTTP dates from integer microseconds (how the stores keep time)."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def now_us() -> int:
    """Now, truncated to the millisecond we render, so rendered and stored times are equal."""
    return time.time_ns() // 1_000_000 * 1000


def to_instant(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_http_date(us: int) -> str:
    return format_datetime(_EPOCH + timedelta(microseconds=us), usegmt=True)


def from_http_date(value: str) -> int | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // timedelta(microseconds=1)


def date_range(value: str) -> tuple[int, int] | None:
    """A FHIR date/dateTime/instant as the [low, high) microsecond range its precision covers.

    Without a time zone the value is taken as UTC (http://hl7.org/fhir/R4/search.html#date leaves the
    zone to the server). Returns None when the value is not a valid FHIR date.
    """
    m = _DATE_RE.match(value)
    if not m:
        return None
    return _range_from_parts(*m.group("y", "m", "d", "H", "M", "S", "f", "tz"))


_US_PER_DAY = 86_400_000_000
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil).

    Integer arithmetic instead of datetime objects: every write indexes several dates.
    """
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _month_days(year: int, month: int) -> int:
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return _DAYS_IN_MONTH[month - 1] + leap


def _range_from_parts(
    y: str,
    m: str | None,
    d: str | None,
    hh: str | None,
    mm: str | None,
    ss: str | None,
    f: str | None,
    tz: str | None,
) -> tuple[int, int] | None:
    year = int(y)
    if year < 1:
        return None
    if m is None:
        return _days(year, 1, 1) * _US_PER_DAY, _days(year + 1, 1, 1) * _US_PER_DAY
    month = int(m)
    if not 1 <= month <= 12:
        return None
    if d is None:
        next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
        return _days(year, month, 1) * _US_PER_DAY, _days(next_year, next_month, 1) * _US_PER_DAY
    day = int(d)
    if not 1 <= day <= _month_days(year, month):
        return None
    low = _days(year, month, day) * _US_PER_DAY
    if hh is None:
        return low, low + _US_PER_DAY
    hour, minute, second = int(hh), int(mm or 0), int(ss or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    low += ((hour * 60 + minute) * 60 + second) * 1_000_000
    if tz and tz != "Z":
        hours, minutes = int(tz[1:3]), int(tz[4:6])
        if hours > 23 or minutes > 59:
            return None
        offset = (hours * 60 + minutes) * 60_000_000
        low -= offset if tz[0] == "+" else -offset
    if f:
        digits = f[1:]
        low += int(digits[:6].ljust(6, "0"))
        return low, low + 10 ** max(0, 6 - len(digits))
    return low, low + (1_000_000 if ss else 60_000_000)


def new_id() -> str:
    """A server-assigned id: UUID version 7 (time-ordered, so B-tree inserts stay local; 74 random bits)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

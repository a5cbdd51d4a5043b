"""Server time: FHIR instants and HTTP dates from integer microseconds (how the stores keep time)."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime, timedelta, timezone
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


def _us(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(microseconds=1)


def date_range(value: str) -> tuple[int, int] | None:
    """A FHIR date/dateTime/instant as the [low, high) microsecond range its precision covers.

    Without a time zone the value is taken as UTC (http://hl7.org/fhir/R4/search.html#date leaves the
    zone to the server). Returns None when the value is not a valid FHIR date.
    """
    m = _DATE_RE.match(value)
    if not m:
        return None
    return _range_from_parts(m.groupdict())


def _range_from_parts(g: dict) -> tuple[int, int] | None:
    tz: timezone = UTC
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        year = int(g["y"])
        if g["m"] is None:
            low = datetime(year, 1, 1, tzinfo=tz)
            high = datetime(year + 1, 1, 1, tzinfo=tz)
        elif g["d"] is None:
            month = int(g["m"])
            low = datetime(year, month, 1, tzinfo=tz)
            high = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
        elif g["H"] is None:
            low = datetime(year, int(g["m"]), int(g["d"]), tzinfo=tz)
            high = low + timedelta(days=1)
        else:
            second = int(g["S"] or 0)
            low = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), second, tzinfo=tz)
            if g["f"]:
                digits = g["f"][1:]
                low += timedelta(microseconds=int(digits[:6].ljust(6, "0")))
                high = low + timedelta(microseconds=10 ** max(0, 6 - len(digits)))
            else:
                high = low + timedelta(seconds=1 if g["S"] else 60)
    except ValueError:
        return None
    return _us(low), _us(high)


def new_id() -> str:
    """A server-assigned id: UUID version 7 (time-ordered, so B-tree inserts stay local; 74 random bits)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

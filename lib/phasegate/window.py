"""Times, durations and the analysis window: ISO 8601 in, tz-aware UTC out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .errors import WindowError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float) -> float:
    """Seconds from '90s', '15m', '24h', '1.5h', '2d' (a bare number is seconds)."""
    if isinstance(text, bool):
        raise WindowError(f"duration must be like 90s, 15m or 24h, got {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise WindowError(f"duration must be like 90s, 15m or 24h, got {text!r}")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not seconds > 0 or seconds > 10 * 365 * 86400:
        raise WindowError(f"duration must be positive and under 10 years, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """'9 h 14 m' style, for people."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    h, rem = divmod(seconds, 3600)
    m = rem // 60
    return f"{h} h {m} m" if h else f"{m} m"


def parse_time(text: str | datetime, *, name: str = "time") -> datetime:
    """A tz-aware UTC datetime from ISO 8601 ('now' allowed); naive means UTC."""
    if isinstance(text, datetime):
        dt = text
    else:
        raw = str(text).strip()
        if raw.lower() == "now":
            return utcnow()
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise WindowError(f"{name} is not an ISO 8601 time: {raw!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        out = dt.astimezone(timezone.utc)
        out.timestamp()
    except (OverflowError, ValueError, OSError):
        raise WindowError(f"{name} is out of range: {text!s}") from None
    if not 1970 <= out.year <= 9998:
        raise WindowError(f"{name} is out of range (years 1970-9998): {text!s}")
    return out


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    """Second-precision ISO 8601 with a Z, as written in reports."""
    return dt.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


@dataclass(frozen=True)
class Window:
    """The phase's monitoring window; `end` may lie in the future (interim report)."""

    start: datetime
    end: datetime

    @classmethod
    def from_args(cls, start, end=None, hours=None, duration=None) -> "Window":
        s = parse_time(start, name="start")
        given = [x is not None for x in (end, hours, duration)]
        if sum(given) != 1:
            raise WindowError("give exactly one of end, hours or duration for the window")
        if end is not None:
            e = parse_time(end, name="end")
        elif hours is not None:
            try:
                h = float(hours)
            except (TypeError, ValueError):
                raise WindowError(f"hours must be a number, got {hours!r}") from None
            if not 0 < h <= 24 * 3650:
                raise WindowError(f"hours must be positive, got {hours!r}")
            e = s + timedelta(hours=h)
        else:
            e = s + timedelta(seconds=parse_duration(duration))
        if e <= s:
            raise WindowError(f"window end {iso(e)} is not after its start {iso(s)}")
        return cls(s, e)

    @classmethod
    def resolve(cls, start=None, end=None, hours=None, default_s: float = 86400.0, now=None) -> "Window":
        """The window from report/notebook parameters ("" counts as not given): with no start it
        ends at `end` (or now) and lasts `hours` or `default_s` (the profile's duration)."""
        def blank(v):
            return v is None or v == ""

        if isinstance(end, str) and end.strip().lower() == "now" and now is not None:
            end = now  # the report's own "now", so the window ends where its evidence does
        if not blank(start):
            if not blank(end):
                return cls.from_args(start, end=end)
            if not blank(hours):
                return cls.from_args(start, hours=hours)
            return cls.from_args(start, duration=default_s)
        e = (now or utcnow()) if blank(end) else parse_time(end, name="end")
        length = cls.from_args(e, hours=hours).duration_s if not blank(hours) else default_s
        return cls(e - timedelta(seconds=length), e)

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()

    def observed_end(self, now: datetime | None = None) -> datetime:
        """Where evidence can reach: the window end, or now for a window still open."""
        return min(self.end, now or utcnow())

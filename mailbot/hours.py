"""The business clock: which instants are open hours, and deadlines counted in open time only.

Pure code: values in, values out, no I/O and no clock (every instant is a parameter).

An open day is one interval of real time, from the first instant its local clock reads `opens` to the first
instant it reads `closes`. Two consequences at DST changes:
- a time skipped by a gap (spring forward) takes effect at the jump itself;
- a time repeated by a fold (fall back) takes effect at its first occurrence, so the repeated hour neither
  reopens a closed shop nor is counted twice.
All arithmetic happens in UTC: Python adds, subtracts and compares datetimes of one zone by wall clock,
which is wrong by the DST shift across a transition.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from holidays import HolidayBase


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
_DAY = timedelta(days=1)
_CLOCK_TIME = re.compile(r"(\d{1,2}):(\d{2})")
# A walk through the calendar that meets this many closed days in a row stops instead of spinning:
# only a holiday list that closes every open day for ten years gets there.
_MAX_CLOSED_DAYS = 3660

_Interval = tuple[datetime, datetime]  # [start, end) in UTC


@dataclass(frozen=True)
class BusinessHours:
    """Weekly open hours in one time zone, closed on holidays."""

    zone: ZoneInfo
    open_days: frozenset[int]  # date.weekday() numbers: 0 is Monday
    opens: timedelta  # since local midnight
    closes: timedelta  # since local midnight; 24 hours is the end of the day
    holidays: frozenset[date] = frozenset()
    holiday_country: str | None = None  # ISO 3166-1 alpha-2, for the `holidays` library

    def __post_init__(self) -> None:
        if not self.open_days:
            raise ValueError("business hours need at least one open day")
        if not self.open_days <= frozenset(range(7)):
            raise ValueError(f"open days must be weekday numbers 0-6, got {sorted(self.open_days)}")
        if not timedelta(0) <= self.opens < self.closes <= _DAY:
            raise ValueError("opens must be before closes, both within one day (00:00 to 24:00)")
        if any(isinstance(day, datetime) for day in self.holidays):
            raise ValueError("holidays must be dates, not datetimes")
        if self.holiday_country is not None:
            _country_calendar(self.holiday_country)

    @classmethod
    def from_settings(
        cls,
        *,
        timezone: str,
        open_days: Sequence[str],
        opens: str,
        closes: str,
        holidays: Sequence[date] = (),
        holiday_country: str | None = None,
    ) -> BusinessHours:
        """Build from configuration values: day names like "mon", times "HH:MM" ("24:00" for closes).

        Raises ValueError naming what is wrong.
        """
        return cls(
            zone=_zone(timezone),
            open_days=frozenset(_weekday(name) for name in open_days),
            opens=_clock_time(opens, "opens", allow_end_of_day=False),
            closes=_clock_time(closes, "closes", allow_end_of_day=True),
            holidays=frozenset(holidays),
            holiday_country=holiday_country.upper() if holiday_country else None,
        )

    def is_open(self, instant: datetime) -> bool:
        """Whether `instant` lies within open hours."""
        at = _utc(instant)
        start, _ = next(self._intervals_from(at))
        return start <= at

    def next_open(self, instant: datetime) -> datetime:
        """The first open instant at or after `instant` (the instant itself when open)."""
        at = _utc(instant)
        start, _ = next(self._intervals_from(at))
        return max(start, at).astimezone(self.zone)

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The earliest instant by which `duration` of business time has passed since `start`.

        A deadline that uses up an open interval exactly is that interval's closing instant; a zero
        duration is `start` itself.
        """
        if duration < timedelta(0):
            raise ValueError("a business-time duration cannot be negative")
        at = _utc(start)
        remaining = duration
        intervals = self._intervals_from(at)
        while remaining:
            begin, end = next(intervals)
            at = max(begin, at)
            step = min(remaining, end - at)
            at += step
            remaining -= step
        return at.astimezone(self.zone)

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Business time between two instants; negative when `end` is before `start`."""
        first, last = _utc(start), _utc(end)
        if last < first:
            return -self.elapsed(end, start)
        total = timedelta(0)
        intervals = self._intervals_from(first)
        while True:
            begin, finish = next(intervals)
            if begin >= last:
                return total
            total += min(finish, last) - max(begin, first)

    def is_holiday(self, day: date) -> bool:
        """Whether the local date `day` is a configured or public holiday."""
        if day in self.holidays:
            return True
        return self.holiday_country is not None and day in _country_calendar(self.holiday_country)

    def _intervals_from(self, at: datetime) -> Iterator[_Interval]:
        """The open intervals that end after the UTC instant `at`, in order, forever."""
        # Earlier local dates end at or before the first instant of `at`'s local date, so none can matter.
        day = at.astimezone(self.zone).date()
        closed_in_a_row = 0
        while True:
            interval = self._interval(day)
            if interval is None:
                closed_in_a_row += 1
                if closed_in_a_row > _MAX_CLOSED_DAYS:
                    raise ValueError(f"no open business hours for {_MAX_CLOSED_DAYS} days after {day}")
            else:
                closed_in_a_row = 0
                if interval[1] > at:
                    yield interval
            day += _DAY

    def _interval(self, day: date) -> _Interval | None:
        """The open interval of a local date, or None when the shop is closed that day."""
        if day.weekday() not in self.open_days or self.is_holiday(day):
            return None
        midnight = datetime.combine(day, time())
        start, end = self._first_reading(midnight + self.opens), self._first_reading(midnight + self.closes)
        # Both boundaries inside one DST gap leave nothing open that day.
        return (start, end) if start < end else None

    def _first_reading(self, wall: datetime) -> datetime:
        """The first UTC instant at which the local clock reads the naive `wall` time or later."""
        first = wall.replace(tzinfo=self.zone)  # fold=0: the earlier of two readings in a fold (PEP 495)
        instant = first.astimezone(UTC)
        if instant.astimezone(self.zone).replace(tzinfo=None) == wall:
            return instant
        # `wall` lies in a gap. PEP 495 maps it with the offset before the jump (fold=0, lands after
        # the jump) or after it (fold=1, lands before): the jump is between the two.
        return _offset_change(first.replace(fold=1).astimezone(UTC), instant, self.zone)


def _offset_change(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant in (before, after] at which `zone` switches to the offset it has at `after`."""
    # tzdata records transitions in whole seconds, so bisecting over seconds finds the exact instant.
    low, high = int(before.timestamp()), int(after.timestamp())
    target = after.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


@cache
def _country_calendar(country: str) -> HolidayBase:
    """A country's public holidays (observed dates included); it fills in years as they are asked."""
    from holidays import country_holidays  # only a site with holiday_country pays for its import

    try:
        return country_holidays(country)
    except NotImplementedError:
        raise ValueError(f"holiday_country {country!r} is not a country the holidays library knows") from None


def shown(instant: datetime, zone: tzinfo) -> str:
    """An instant as people read it, everywhere (CLI tables, `ticket show`, mail): local time in `zone` with
    its UTC offset, to the minute: '2026-12-04 10:02 -05:00'. Machine output (--json) stays ISO 8601."""
    local = instant.astimezone(zone)
    offset = local.isoformat()[-6:]  # "+HH:MM"; zones with second offsets do not exist since 1972
    return f"{local:%Y-%m-%d %H:%M} {offset}"


def _utc(instant: datetime) -> datetime:
    if instant.utcoffset() is None:
        raise ValueError(f"{instant.isoformat()} has no time zone; business hours need an aware datetime")
    return instant.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r} is not an IANA time zone name") from None


def _weekday(name: str) -> int:
    try:
        return DAY_NAMES.index(name.strip().lower())
    except ValueError:
        raise ValueError(f"open day {name!r} is not one of {', '.join(DAY_NAMES)}") from None


def _clock_time(text: str, key: str, *, allow_end_of_day: bool) -> timedelta:
    """ "HH:MM" as the time since midnight; "24:00" (the end of the day) only where allowed."""
    match = _CLOCK_TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{key} {text!r} is not a time like 08:00")
    hours, minutes = int(match[1]), int(match[2])
    if (hours, minutes) == (24, 0) and allow_end_of_day:
        return _DAY
    if hours > 23 or minutes > 59:
        allowed = "00:00 to 24:00" if allow_end_of_day else "00:00 to 23:59"
        raise ValueError(f"{key} {text!r} is not a time of day ({allowed})")
    return timedelta(hours=hours, minutes=minutes)

"""The business clock: DOMAIN.md's examples, New York DST, edge settings, and a brute-force oracle."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbot.hours import BusinessHours

pytestmark = pytest.mark.calendar  # run again under pinned wall clocks (Makefile: test-calendar)

NY = ZoneInfo("America/New_York")
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
THANKSGIVING = date(2026, 11, 26)
FOUR_HOURS = timedelta(hours=4)


def hours(**overrides: object) -> BusinessHours:
    """DOMAIN.md's calendar (Mon-Fri 08:00-18:00 Eastern), with some settings replaced."""
    settings_: dict[str, object] = {
        "timezone": "America/New_York",
        "open_days": WEEKDAYS,
        "opens": "08:00",
        "closes": "18:00",
    }
    settings_.update(overrides)
    return BusinessHours.from_settings(**settings_)  # type: ignore[arg-type]


def ny(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, *, fold: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=NY, fold=fold)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def same_instant(a: datetime, b: datetime) -> bool:
    # Inter-zone == is always False for a time in a DST fold (PEP 495), so compare in UTC.
    return a.astimezone(UTC) == b.astimezone(UTC)


class TestDomainExamples:
    """Each deadline example of DOMAIN.md, 4 business hours, Eastern time, November 2026."""

    @pytest.mark.parametrize(
        ("received", "due"),
        [
            (ny(2026, 11, 17, 10), ny(2026, 11, 17, 14)),  # Tue 10:00 -> Tue 14:00
            (ny(2026, 11, 20, 17), ny(2026, 11, 23, 11)),  # Fri 17:00 -> Mon 11:00
            (ny(2026, 11, 21, 9), ny(2026, 11, 23, 12)),  # Sat 09:00 -> Mon 12:00
            (ny(2026, 11, 18, 20), ny(2026, 11, 19, 12)),  # Wed 20:00 -> Thu 12:00
            (ny(2026, 11, 26, 9), ny(2026, 11, 27, 12)),  # Thanksgiving 09:00 -> Fri 12:00
            (ny(2026, 11, 17, 14), ny(2026, 11, 17, 18)),  # Tue 14:00 -> Tue 18:00, the closing instant
        ],
    )
    def test_deadline(self, received: datetime, due: datetime) -> None:
        """add() gives the documented due time, and elapsed() measures exactly 4 hours back."""
        clock = hours(holidays=[THANKSGIVING])
        assert clock.add(received, FOUR_HOURS) == due
        assert clock.elapsed(received, due) == FOUR_HOURS

    def test_thanksgiving_from_the_us_calendar(self) -> None:
        """holiday_country="US" closes Thanksgiving without configuring the date."""
        clock = hours(holiday_country="us")
        assert clock.is_holiday(THANKSGIVING)
        assert not clock.is_open(ny(2026, 11, 26, 10))
        assert clock.add(ny(2026, 11, 26, 9), FOUR_HOURS) == ny(2026, 11, 27, 12)

    def test_without_the_holiday_thursday_is_open(self) -> None:
        """The holiday, not the weekday, closes Thanksgiving."""
        assert hours().add(ny(2026, 11, 26, 9), FOUR_HOURS) == ny(2026, 11, 26, 13)

    def test_closing_instant_is_not_pushed_to_the_next_opening(self) -> None:
        """A deadline ending at 18:00 is 18:00 that day, even on Friday."""
        assert hours().add(ny(2026, 11, 20, 16), timedelta(hours=2)) == ny(2026, 11, 20, 18)


class TestOpenAndNextOpen:
    """is_open and next_open around the edges of a day and a week."""

    @pytest.mark.parametrize(
        ("instant", "is_open"),
        [
            (ny(2026, 11, 17, 8), True),
            (ny(2026, 11, 17, 7, 59, 59), False),
            (ny(2026, 11, 17, 17, 59, 59), True),
            (ny(2026, 11, 17, 18), False),
            (ny(2026, 11, 21, 12), False),
        ],
    )
    def test_is_open(self, instant: datetime, is_open: bool) -> None:
        """Opening is inclusive, closing exclusive, weekends closed."""
        assert hours().is_open(instant) is is_open

    def test_next_open_of_an_open_instant_is_itself(self) -> None:
        """An open instant is its own next opening, given back in the business zone."""
        opened = hours().next_open(utc(2026, 11, 17, 15, 30))
        assert opened == ny(2026, 11, 17, 10, 30)
        assert opened.tzinfo is NY

    def test_next_open_skips_the_weekend(self) -> None:
        """Saturday morning waits for Monday 08:00."""
        assert hours().next_open(ny(2026, 11, 21, 9)) == ny(2026, 11, 23, 8)

    def test_any_offset_in_business_zone_out(self) -> None:
        """An instant written in another offset means the same moment; the answer is Eastern."""
        received = datetime(2026, 11, 17, 16, 0, tzinfo=timezone(timedelta(hours=1)))  # 10:00 Eastern
        due = hours().add(received, FOUR_HOURS)
        assert due == ny(2026, 11, 17, 14)
        assert due.tzinfo is NY

    def test_zero_duration_is_the_start(self) -> None:
        """Adding nothing gives the start back, open or not."""
        clock = hours()
        assert clock.add(ny(2026, 11, 21, 9), timedelta(0)) == ny(2026, 11, 21, 9)
        assert clock.add(ny(2026, 11, 17, 10), timedelta(0)) == ny(2026, 11, 17, 10)

    def test_elapsed_is_antisymmetric(self) -> None:
        """Counting backwards gives the negative business time."""
        clock = hours()
        assert clock.elapsed(ny(2026, 11, 23, 11), ny(2026, 11, 20, 17)) == -FOUR_HOURS

    def test_long_deadline_walks_whole_weeks(self) -> None:
        """Two business weeks (100 h) from Monday 08:00 end on the second Friday's closing."""
        assert hours().add(ny(2026, 11, 2, 8), timedelta(hours=100)) == ny(2026, 11, 13, 18)


class TestDaylightSaving:
    """America/New_York changes offset on 2026-03-08 and 2026-11-01 (both Sundays, at 02:00)."""

    def test_spring_weekend(self) -> None:
        """Friday 17:00 EST plus 4 h is Monday 11:00 EDT: the lost hour is not business time."""
        clock = hours()
        due = clock.add(ny(2026, 3, 6, 17), FOUR_HOURS)
        assert due == utc(2026, 3, 9, 15)
        assert (due.hour, due.utcoffset()) == (11, timedelta(hours=-4))
        assert clock.elapsed(ny(2026, 3, 6, 8), ny(2026, 3, 9, 18)) == timedelta(hours=20)

    def test_autumn_weekend(self) -> None:
        """Friday 17:00 EDT plus 4 h is Monday 11:00 EST: the extra hour is not business time either."""
        clock = hours()
        due = clock.add(ny(2026, 10, 30, 17), FOUR_HOURS)
        assert due == utc(2026, 11, 2, 16)
        assert (due.hour, due.utcoffset()) == (11, timedelta(hours=-5))
        assert clock.elapsed(ny(2026, 10, 30, 8), ny(2026, 11, 2, 18)) == timedelta(hours=20)

    def test_round_the_clock_days_are_23_and_25_hours(self) -> None:
        """With 00:00-24:00 every day, the DST Sundays hold 23 and 25 hours of business time."""
        clock = hours(open_days=["sun"], opens="00:00", closes="24:00")
        assert clock.elapsed(ny(2026, 3, 8), ny(2026, 3, 9)) == timedelta(hours=23)
        assert clock.elapsed(ny(2026, 11, 1), ny(2026, 11, 2)) == timedelta(hours=25)

    def test_adding_across_the_autumn_fold_counts_real_time(self) -> None:
        """Saturday 23:00 EDT plus 4 real hours is 02:00 EST, three hours later on the wall clock."""
        clock = hours(open_days=["sat", "sun"], opens="00:00", closes="24:00")
        due = clock.add(ny(2026, 10, 31, 23), FOUR_HOURS)
        assert due == utc(2026, 11, 1, 7)
        assert (due.hour, due.utcoffset()) == (2, timedelta(hours=-5))

    def test_opening_time_in_the_spring_gap_opens_at_the_jump(self) -> None:
        """02:30 does not exist on 2026-03-08: the shop opens when the clock jumps to 03:00 EDT."""
        clock = hours(open_days=["sun"], opens="02:30", closes="12:00")
        assert clock.next_open(ny(2026, 3, 8, 0)) == utc(2026, 3, 8, 7)
        assert not clock.is_open(utc(2026, 3, 8, 6, 59))
        assert clock.elapsed(ny(2026, 3, 8), ny(2026, 3, 9)) == timedelta(hours=9)

    def test_closing_time_in_the_spring_gap_closes_at_the_jump(self) -> None:
        """Closing at 02:30 on 2026-03-08 means closing at 01:59:59 EST + 1 s."""
        clock = hours(open_days=["sun", "mon"], opens="00:00", closes="02:30")
        assert clock.elapsed(ny(2026, 3, 8), ny(2026, 3, 9)) == timedelta(hours=2)
        assert clock.add(ny(2026, 3, 8), timedelta(hours=3)) == ny(2026, 3, 9, 1)

    def test_a_day_whose_hours_fall_inside_the_gap_is_closed(self) -> None:
        """02:10-02:50 never happens on 2026-03-08, so that Sunday has no open time."""
        clock = hours(open_days=["sun", "mon"], opens="02:10", closes="02:50")
        assert clock.next_open(ny(2026, 3, 8)) == ny(2026, 3, 9, 2, 10)

    def test_opening_time_in_the_autumn_fold_is_its_first_occurrence(self) -> None:
        """01:30 happens twice on 2026-11-01: the shop opens at the first and stays open."""
        clock = hours(open_days=["sun"], opens="01:30", closes="12:00")
        assert same_instant(clock.next_open(ny(2026, 11, 1)), utc(2026, 11, 1, 5, 30))
        assert clock.is_open(ny(2026, 11, 1, 1, 15, fold=1))
        assert clock.elapsed(ny(2026, 11, 1), ny(2026, 11, 2)) == timedelta(hours=11, minutes=30)

    def test_closing_time_in_the_autumn_fold_is_its_first_occurrence(self) -> None:
        """Closing at 01:30 on 2026-11-01: the repeated 01:00-01:30 does not reopen."""
        clock = hours(open_days=["sun"], opens="00:00", closes="01:30")
        assert clock.is_open(ny(2026, 11, 1, 1, 15, fold=0))
        assert not clock.is_open(ny(2026, 11, 1, 1, 15, fold=1))
        assert clock.elapsed(ny(2026, 11, 1), ny(2026, 11, 2)) == timedelta(hours=1, minutes=30)


class TestEndOfDay:
    """closes = "24:00" runs to local midnight."""

    def test_closing_at_midnight_is_the_next_days_first_instant(self) -> None:
        """A deadline using up Friday's last hour is midnight, not Monday's opening."""
        clock = hours(opens="00:00", closes="24:00")
        assert clock.add(ny(2026, 11, 20, 23), timedelta(hours=1)) == ny(2026, 11, 21)
        assert clock.add(ny(2026, 11, 20, 23, 30), timedelta(hours=1)) == ny(2026, 11, 23, 0, 30)

    def test_consecutive_full_days_join(self) -> None:
        """Tuesday to Wednesday at midnight is one stretch of open time."""
        clock = hours(opens="00:00", closes="24:00")
        assert clock.is_open(ny(2026, 11, 18))
        assert clock.elapsed(ny(2026, 11, 17, 23), ny(2026, 11, 18, 1)) == timedelta(hours=2)


class TestSettingsAreChecked:
    """from_settings refuses what it cannot honour, with a message naming it."""

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"timezone": "Mars/Olympus_Mons"}, "timezone 'Mars/Olympus_Mons'"),
            ({"open_days": []}, "at least one open day"),
            ({"open_days": ["mon", "funday"]}, "open day 'funday'"),
            ({"opens": "8am"}, "opens '8am'"),
            ({"opens": "24:00"}, "opens '24:00'"),
            ({"closes": "24:01"}, "closes '24:01'"),
            ({"closes": "18:60"}, "closes '18:60'"),
            ({"opens": "18:00", "closes": "08:00"}, "opens must be before closes"),
            ({"opens": "09:00", "closes": "09:00"}, "opens must be before closes"),
            ({"holiday_country": "XX"}, "holiday_country 'XX'"),
            ({"holidays": [datetime(2026, 11, 26, 0, 0)]}, "dates, not datetimes"),
        ],
    )
    def test_bad_setting(self, overrides: dict[str, object], message: str) -> None:
        """Each bad value raises ValueError naming it."""
        with pytest.raises(ValueError, match=message):
            hours(**overrides)

    def test_naive_datetime_is_refused(self) -> None:
        """A datetime without a zone is ambiguous."""
        with pytest.raises(ValueError, match="no time zone"):
            hours().is_open(datetime(2026, 11, 17, 10))

    def test_negative_duration_is_refused(self) -> None:
        """add() counts forward only."""
        with pytest.raises(ValueError, match="negative"):
            hours().add(ny(2026, 11, 17, 10), -FOUR_HOURS)

    def test_holidays_on_every_open_day_stop_the_walk(self) -> None:
        """A calendar whose every open day is a holiday for ten years raises instead of looping."""
        mondays = [date(2026, 11, 23) + timedelta(weeks=n) for n in range(53 * 11)]
        clock = hours(open_days=["mon"], holidays=mondays)
        with pytest.raises(ValueError, match="no open business hours"):
            clock.next_open(ny(2026, 11, 21))


# --- The oracle: minute-by-minute stepping, written independently of the module's interval walk. ---

ZONES = ("America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata", "UTC")
MINUTE = timedelta(minutes=1)
YEAR_START = utc(2026, 1, 1)


def _offset_changes(zone: ZoneInfo) -> list[datetime]:
    hourly = (YEAR_START + timedelta(hours=h) for h in range(366 * 24))
    changes, previous = [], YEAR_START.astimezone(zone).utcoffset()
    for instant in hourly:
        offset = instant.astimezone(zone).utcoffset()
        if offset != previous:
            changes.append(instant)
            previous = offset
    return changes or [YEAR_START]


TRANSITIONS = {name: _offset_changes(ZoneInfo(name)) for name in ZONES}


@cache
def _public_holidays(country: str) -> holidays.HolidayBase:
    return holidays.country_holidays(country)


class Oracle:
    """Open minutes by brute force: a minute is open when, on an open non-holiday local date, the highest
    wall-clock reading so far that day lies in [opens, closes)."""

    def __init__(
        self,
        zone: str,
        days: Iterable[int],
        opens: int,
        closes: int,
        holidays_: Iterable[date],
        country: str | None,
    ) -> None:
        self.zone, self.days, self.opens, self.closes = ZoneInfo(zone), set(days), opens, closes
        self.holidays, self.country = set(holidays_), country

    def open_at(self, minute: datetime) -> bool:
        local = minute.astimezone(self.zone)
        day = local.date()
        if day.weekday() not in self.days or day in self.holidays:
            return False
        if self.country and day in _public_holidays(self.country):
            return False
        while local.fold:  # in a repeated hour the highest reading so far is the one just before the fold
            minute -= MINUTE
            local = minute.astimezone(self.zone)
        return self.opens <= local.hour * 60 + local.minute < self.closes

    def add(self, start: datetime, minutes: int) -> datetime:
        at, counted = start, 0
        while counted < minutes:
            counted += self.open_at(at)
            at += MINUTE
        return at

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        steps = int((end - start) / MINUTE)
        return MINUTE * sum(self.open_at(start + MINUTE * n) for n in range(steps))

    def next_open(self, start: datetime) -> datetime:
        at = start
        while not self.open_at(at):
            at += MINUTE
        return at


# Opening and closing times inside or at the edge of the 01:00-03:00 gaps and folds of these zones.
_DST_MINUTES = st.sampled_from([0, 60, 90, 100, 120, 121, 130, 150, 165, 180, 181])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[BusinessHours, Oracle, datetime, int, datetime]:
    zone = draw(st.sampled_from(ZONES))
    days = draw(st.frozensets(st.integers(0, 6), min_size=1))
    opens = draw(st.one_of(_DST_MINUTES, st.integers(0, 23 * 60)))
    closes = draw(st.one_of(_DST_MINUTES.filter(lambda m: m > opens), st.integers(opens + 1, 24 * 60)))
    if draw(st.booleans()):  # around an offset change, with that day open
        transition = draw(st.sampled_from(TRANSITIONS[zone]))
        days |= {transition.astimezone(ZoneInfo(zone)).weekday()}
        start_utc = transition + MINUTE * draw(st.integers(-2 * 1440, 1440))
    else:
        start_utc = YEAR_START + MINUTE * draw(st.integers(0, 365 * 1440))
    closed_dates = draw(st.frozensets(st.integers(-1, 10), max_size=3))
    holiday_dates = {start_utc.date() + timedelta(days=n) for n in closed_dates}
    country = draw(st.sampled_from([None, "US", "DE"]))
    clock = BusinessHours.from_settings(
        timezone=zone,
        open_days=[("mon", "tue", "wed", "thu", "fri", "sat", "sun")[d] for d in days],
        opens=f"{opens // 60:02}:{opens % 60:02}",
        closes=f"{closes // 60:02}:{closes % 60:02}",
        holidays=sorted(holiday_dates),
        holiday_country=country,
    )
    oracle = Oracle(zone, days, opens, closes, holiday_dates, country)
    # The input may carry any offset; bounded durations keep the minute-stepping oracle fast.
    offset = timezone(timedelta(minutes=15 * draw(st.integers(-48, 56))))
    start = start_utc.astimezone(offset)
    weekly_minutes = len(days) * (closes - opens)
    duration = draw(st.integers(0, min(weekly_minutes, 2 * 1440)))
    end = start + MINUTE * draw(st.integers(-2 * 1440, 5 * 1440))
    return clock, oracle, start, duration, end


@settings(max_examples=300, deadline=timedelta(seconds=10))
@given(scenarios())
def test_agrees_with_minute_stepping(scenario: tuple[BusinessHours, Oracle, datetime, int, datetime]) -> None:
    """is_open, next_open, add and elapsed match the brute-force oracle on minute-granular inputs."""
    clock, oracle, start, duration, end = scenario
    assert clock.is_open(start) == oracle.open_at(start)
    assert same_instant(clock.next_open(start), oracle.next_open(start))
    due = clock.add(start, timedelta(minutes=duration))
    assert due.tzinfo is clock.zone
    assert same_instant(due, oracle.add(start, duration))
    assert clock.elapsed(start, due) == timedelta(minutes=duration)
    expected = oracle.elapsed(start, end) if end >= start else -oracle.elapsed(end, start)
    assert clock.elapsed(start, end) == expected

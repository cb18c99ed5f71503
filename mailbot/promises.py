"""What mail says about the promise, in words, from the configuration: open hours, deadlines, the domains
our mail comes from, times and sizes. Pure: values in, text out.

Templates never state a fact of their own ("4 business hours", "Eastern Time", "@schoolmint.com"), so a
changed `[business_hours]`, `[sla]`, `[support]` or `[outbound]` changes every mail that mentions it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta

from mailbot.hours import BusinessHours

# Indexed by date.weekday(), as BusinessHours.open_days.
_DAY_WORDS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def open_hours(hours: BusinessHours) -> str:
    """'Monday to Friday, 8:00 AM to 6:00 PM New York time'."""
    return f"{_days(sorted(hours.open_days))}, {_clock(hours.opens)} to {_clock(hours.closes)} {zone_words(hours)}"


def zone_words(hours: BusinessHours) -> str:
    """'New York time' for America/New_York: the zone's city, as people name a time zone."""
    city = str(hours.zone.key).rpartition("/")[2].replace("_", " ")
    return f"{city} time" if city and city.upper() != "UTC" else "UTC"


def in_words(window: timedelta, *, business: bool = False) -> str:
    """'14 days', '1 hour', '90 minutes'; business time in hours or minutes ('4 business hours'): a business
    day is no fixed number of hours."""
    minutes = int(window.total_seconds() // 60)
    units = ((60, "hour"), (1, "minute")) if business else ((1440, "day"), (60, "hour"), (1, "minute"))
    for size, unit in units:
        if minutes >= size and minutes % size == 0:
            count = minutes // size
            return f"{count} {'business ' if business else ''}{unit}{'s' if count != 1 else ''}"
    return "a moment"


def sender_domains(addresses: Iterable[str], extra: Iterable[str]) -> list[str]:
    """The domains our mail comes from, each once, in the order given: the addresses' own, then `extra`."""
    found: list[str] = []
    for domain in [a.rpartition("@")[2] for a in addresses] + [d.lstrip("@") for d in extra]:
        if domain and domain.lower() not in found:
            found.append(domain.lower())
    return found


def listed(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}" if items else ""


def size_words(size: int) -> str:
    """'812 bytes', '45 KB', '2.3 MB' (decimal units, as mail clients show sizes)."""
    if size < 1000:
        return f"{size} bytes"
    if size < 1_000_000:
        return f"{size / 1000:.0f} KB"
    return f"{size / 1_000_000:.1f} MB"


def _days(days: Sequence[int]) -> str:
    """'Monday to Friday' for a run of days, else 'Monday, Wednesday and Friday'."""
    if len(days) > 2 and days == list(range(days[0], days[-1] + 1)):
        return f"{_DAY_WORDS[days[0]]} to {_DAY_WORDS[days[-1]]}"
    return listed([_DAY_WORDS[d] for d in days])


def _clock(since_midnight: timedelta) -> str:
    """'8:00 AM', '6:30 PM', 'midnight' (24:00)."""
    minutes = int(since_midnight.total_seconds() // 60)
    if minutes in (0, 1440):
        return "midnight"
    hour, minute = divmod(minutes, 60)
    return f"{(hour - 1) % 12 + 1}:{minute:02d} {'AM' if hour < 12 else 'PM'}"


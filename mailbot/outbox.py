"""When to try sending again: pure timing rules for the outbox."""

from __future__ import annotations

from datetime import timedelta

FIRST_RETRY = timedelta(seconds=5)


def retry_delay(attempts: int, cap: timedelta) -> timedelta:
    """Exponential backoff after `attempts` failed tries (5s, 10s, 20s...), capped so that mail goes out
    within `cap` of the relay coming back (the promise is measured in minutes, not hours)."""
    # The exponent stops growing long before it matters: 2**n seconds overflows a timedelta after a day of
    # minute-by-minute retries (a relay down that long is exactly when this must keep working).
    doublings = min(max(0, attempts - 1), 30)
    return min(cap, FIRST_RETRY * 2**doublings)


def is_permanent(smtp_code: int | None) -> bool:
    """A 5xx reply from the relay (RFC 5321 4.2.1) will not change by retrying; anything else may."""
    return smtp_code is not None and 500 <= smtp_code < 600

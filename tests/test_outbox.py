"""Retry timing for the outbox: pure rules."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mailbot.outbox import is_permanent, retry_delay

CAP = timedelta(seconds=60)


class TestRetryDelay:
    def test_doubles_from_five_seconds_up_to_the_cap(self) -> None:
        assert [retry_delay(n, CAP).total_seconds() for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]

    @pytest.mark.parametrize("attempts", [100, 1_440, 100_000])
    def test_a_relay_down_for_days_keeps_the_cap(self, attempts: int) -> None:
        """A minute-by-minute retry for a day (1,440 attempts) and beyond: still the cap, never an overflow."""
        assert retry_delay(attempts, CAP) == CAP

    def test_no_attempt_yet_is_the_first_delay(self) -> None:
        assert retry_delay(0, CAP) == timedelta(seconds=5)


@pytest.mark.parametrize(
    ("code", "permanent"), [(550, True), (554, True), (451, False), (421, False), (None, False)]
)
def test_only_5xx_is_permanent(code: int | None, permanent: bool) -> None:
    """RFC 5321 4.2.1: 5yz is a permanent negative reply; 4yz and no reply at all are worth retrying."""
    assert is_permanent(code) is permanent

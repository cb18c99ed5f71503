"""The worker processes' own pieces (mailbot.workers); the processes themselves: tests/test_supervisor.py."""

from __future__ import annotations

from datetime import timedelta

from mailbot.clock import FrozenClock
from mailbot.workers import Told
from tests.conftest import TUESDAY_10_ET

MINUTE = timedelta(minutes=1)


class TestTold:
    def test_a_later_instant_is_not_told_while_an_earlier_one_is_ahead(self) -> None:
        """The job runs at the earlier instant and re-arms itself from the database: the later one is covered."""
        clock = FrozenClock(TUESDAY_10_ET)
        told = Told(clock)
        assert told.needed("sla", clock.now() + 5 * MINUTE)
        assert not told.needed("sla", clock.now() + 6 * MINUTE)
        assert not told.needed("sla", clock.now() + 5 * MINUTE)

    def test_an_earlier_instant_is_told(self) -> None:
        clock = FrozenClock(TUESDAY_10_ET)
        told = Told(clock)
        assert told.needed("sla", clock.now() + 5 * MINUTE)
        assert told.needed("sla", clock.now() + 2 * MINUTE)
        assert not told.needed("sla", clock.now() + 3 * MINUTE)

    def test_once_the_instant_told_has_passed_the_next_is_told(self) -> None:
        """The run it woke may be over: nothing is known about when the job runs next."""
        clock = FrozenClock(TUESDAY_10_ET)
        told = Told(clock)
        assert told.needed("sla", clock.now() + MINUTE)
        clock.advance(2 * MINUTE)
        assert told.needed("sla", clock.now() + 5 * MINUTE)

    def test_each_job_on_its_own(self) -> None:
        clock = FrozenClock(TUESDAY_10_ET)
        told = Told(clock)
        assert told.needed("sla", clock.now() + 5 * MINUTE)
        assert told.needed("outbox", clock.now() + 6 * MINUTE)

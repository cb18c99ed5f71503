"""The worker processes' own pieces (mailbot.workers); the processes themselves: tests/test_supervisor.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from mailbot.clock import FrozenClock
from mailbot.workers import Paced, Told
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


class TestPaced:
    async def test_wake_ups_within_the_interval_fold_into_one_at_its_end(self) -> None:
        """The first goes at once; the next ones, asked for within the interval, go as one when it ends:
        none is lost, so a commit is always followed by a wake-up."""
        loop = asyncio.get_running_loop()
        posted: list[tuple[str, float]] = []
        paced = Paced(lambda job: posted.append((job, loop.time())), every=0.2)
        for _ in range(5):
            paced.wake("outbox")
        assert [job for job, _ in posted] == ["outbox"]
        async with asyncio.timeout(5):
            while len(posted) < 2:
                await asyncio.sleep(0.01)
        assert posted[1][1] - posted[0][1] >= 0.2
        await asyncio.sleep(0.3)
        assert len(posted) == 2  # the five made two

    async def test_a_wake_up_after_a_quiet_interval_goes_at_once(self) -> None:
        posted: list[str] = []
        paced = Paced(posted.append, every=0.05)
        paced.wake("outbox")
        await asyncio.sleep(0.1)
        paced.wake("outbox")
        paced.wake("sla")  # each job on its own
        assert posted == ["outbox", "outbox", "sla"]

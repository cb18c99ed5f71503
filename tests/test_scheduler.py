"""The timer itself: real APScheduler on the event loop, short intervals, bounded waits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from mailbot.clock import FrozenClock
from mailbot.scheduler import Scheduler
from tests.world import until

HOUR = timedelta(hours=1)


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    # A frozen clock years away from the system clock: wake-ups must carry over the distance, not the instant.
    timer = Scheduler(FrozenClock(datetime(2031, 6, 2, 12, 0, tzinfo=UTC)))
    yield timer
    await timer.stop(timeout=5)


class TestScheduler:
    async def test_runs_at_start_then_when_woken(self, scheduler: Scheduler) -> None:
        runs: list[int] = []

        async def job() -> None:
            runs.append(1)

        scheduler.every("job", HOUR, job)
        scheduler.start()
        await until(lambda: len(runs) == 1, "the run at start")
        scheduler.wake("job")
        await until(lambda: len(runs) == 2, "the woken run")

    async def test_wake_at_is_measured_on_the_injected_clock(self, scheduler: Scheduler) -> None:
        """An instant an hour ahead on the frozen clock stays an hour away; 50 ms ahead comes at once."""
        runs: list[int] = []

        async def job() -> None:
            runs.append(1)

        scheduler.every("job", HOUR, job)
        scheduler.start()
        await until(lambda: len(runs) == 1, "the run at start")
        scheduler.wake("job", scheduler.clock.now() + HOUR)
        await asyncio.sleep(0.3)
        assert len(runs) == 1
        scheduler.wake("job", scheduler.clock.now() + timedelta(milliseconds=50))
        await until(lambda: len(runs) == 2, "the run 50 ms ahead")

    async def test_a_wake_up_during_a_run_runs_it_once_more(
        self, scheduler: Scheduler, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Not skipped as a second instance: the work that caused the wake-up is not left for the next sweep."""
        release = asyncio.Event()
        started: list[int] = []
        running = 0
        overlapped = False

        async def job() -> None:
            nonlocal running, overlapped
            running += 1
            overlapped = overlapped or running > 1
            started.append(1)
            if len(started) == 1:
                await release.wait()
            running -= 1

        scheduler.every("job", HOUR, job)
        scheduler.start()
        await until(lambda: len(started) == 1, "the first run")
        scheduler.wake("job")
        scheduler.wake("job")
        await asyncio.sleep(0.1)
        assert len(started) == 1  # never two at once
        release.set()
        await until(lambda: len(started) == 2, "the run the wake-ups asked for")
        await asyncio.sleep(0.1)
        assert len(started) == 2 and not overlapped  # two wake-ups during one run: one more run
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    async def test_stop_lets_a_running_job_finish(self, scheduler: Scheduler) -> None:
        """A send in progress is not cut between the relay's answer and its record."""
        finished = asyncio.Event()
        started = asyncio.Event()

        async def job() -> None:
            started.set()
            await asyncio.sleep(0.2)
            finished.set()

        scheduler.every("job", HOUR, job)
        scheduler.start()
        await asyncio.wait_for(started.wait(), 5)
        await scheduler.stop(timeout=5)
        assert finished.is_set()

    async def test_stop_gives_up_after_the_timeout(
        self, scheduler: Scheduler, caplog: pytest.LogCaptureFixture
    ) -> None:
        started = asyncio.Event()

        async def job() -> None:
            started.set()
            await asyncio.sleep(3600)

        scheduler.every("stuck", HOUR, job)
        scheduler.start()
        await asyncio.wait_for(started.wait(), 5)
        await scheduler.stop(timeout=0.1)
        assert "stopping with 1 job(s) still running: stuck" in caplog.text

"""APScheduler as the timer, the database as the truth.

Jobs hold no state: each run reads what is due from the store. A job is woken early when new work arrives
(a ticket queued its confirmation) and re-armed for the next due instant; a periodic sweep catches the rest,
so a restart or a missed wake-up only delays, never loses.

A job never runs twice at once: a wake-up that comes while it runs (APScheduler would skip it as a second
instance, and the work that caused it would wait for the next sweep) makes it run once more right after.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailbot.clock import Clock

log = logging.getLogger("mailbot.scheduler")


class Scheduler:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        # More than one instance may be submitted; _serial folds them into one run after another.
        self._scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 8})
        self._runs: dict[str, asyncio.Task[Any]] = {}  # the run in progress of each job
        self._again: set[str] = set()

    def every(self, name: str, interval: timedelta, job: Callable[[], Awaitable[object]]) -> None:
        """Run `job` now and then every `interval`; `wake(name)` runs it early."""
        self._scheduler.add_job(
            self._serial(name, job),
            "interval",
            seconds=interval.total_seconds(),
            id=name,
            name=name,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
        )

    def wake(self, name: str, at: datetime | None = None) -> None:
        """Run job `name` at `at` (an instant of the injected clock; default: now), unless it is due sooner."""
        job = self._scheduler.get_job(name)
        if job is None:
            return
        # APScheduler times on the system clock, `at` is on the injected one (the same in production, a frozen
        # one in tests): what carries over is how far ahead it lies.
        ahead = max(timedelta(0), at - self.clock.now()) if at is not None else timedelta(0)
        when = datetime.now(UTC) + ahead
        if job.next_run_time is None or when < job.next_run_time:
            job.modify(next_run_time=when)

    def _serial(self, name: str, job: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            if name in self._runs:
                self._again.add(name)
                return
            current = asyncio.current_task()
            assert current is not None  # APScheduler runs each coroutine job as a task of its own
            self._runs[name] = current
            try:
                while True:
                    self._again.discard(name)
                    await job()
                    if name not in self._again:
                        return
            finally:
                del self._runs[name]

        return run

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def start(self) -> None:
        self._scheduler.start()

    async def stop(self, timeout: float) -> None:
        """No new runs; the runs in progress finish (up to `timeout` seconds) before the timer stops.

        APScheduler's own shutdown cancels a running coroutine job: a send cut between the relay's 250 and
        its record would go out again after the restart.
        """
        if not self._scheduler.running:
            return
        self._scheduler.pause()
        if self._runs:
            _, late = await asyncio.wait(list(self._runs.values()), timeout=timeout)
            if late:
                log.warning(
                    "stopping with %d job(s) still running: %s", len(late), ", ".join(sorted(self._runs))
                )
        self._scheduler.shutdown(wait=False)

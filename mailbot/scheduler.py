"""APScheduler as the timer, the database as the truth.

Jobs hold no state: each run reads what is due from the store. A job is woken early when new work arrives
(a ticket queued its confirmation) and re-armed for the next due instant; a periodic sweep catches the rest,
so a restart or a missed wake-up only delays, never loses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("mailbot.scheduler")


class Scheduler:
    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1})

    def every(self, name: str, interval: timedelta, job: Callable[[], Awaitable[object]]) -> None:
        """Run `job` now and then every `interval`; `wake(name)` runs it early."""
        self._scheduler.add_job(
            job,
            "interval",
            seconds=interval.total_seconds(),
            id=name,
            name=name,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
        )

    def wake(self, name: str, at: datetime | None = None) -> None:
        """Run job `name` at `at` (default: now), unless it is already due sooner."""
        job = self._scheduler.get_job(name)
        if job is None:
            return
        when = at or datetime.now(UTC)
        if job.next_run_time is None or when < job.next_run_time:
            job.modify(next_run_time=when)

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

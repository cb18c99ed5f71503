"""The work behind the doors, run in this process: the claims' leases, the intake runner, and the scheduler
that drains the outbox and sweeps the deadlines.

`mailbot run` runs both loops here beside the doors (layout "single"), or one of them in each worker process
(mailbot.workers): the same `Local` either way. What one loop must tell the other (a batch decided: drain
the outbox; a new ticket's first SLA instant: sweep then) goes straight to it when it runs here, else to
`elsewhere`, which carries it to the process that runs it.

Stopping: the intake finishes its batch in hand and what is pending, then the outbox is sent (each bounded);
nothing is cut in the middle (a send between the relay's 250 and its record would go out again), and what
is still claimed is given back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from mailbot.app import App
from mailbot.errors import TransientError
from mailbot.metrics import Tally
from mailbot.scheduler import Scheduler

log = logging.getLogger("mailbot")
DRAIN_TIMEOUT = 20.0
OUTBOX = "outbox"  # the scheduler's jobs, also the names of the wake-ups between processes
SLA = "sla"
# How long a drain waits for more once woken by queued mail. Under load the intake decides a small batch
# every few milliseconds; a drain for each sent one to three messages, and a drain's own costs (its
# transactions, its thread hops, the scheduler) were most of the sender's CPU. Nothing to the 1-hour promise.
GATHER = timedelta(milliseconds=100)

Elsewhere = Callable[[str, datetime | None], None]  # (job, at): wake a job of the loop another process runs


class Sending:
    """The scheduler's two jobs: the outbox drain and the SLA sweep, each woken early when work arrives."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.scheduler = Scheduler(app.clock)
        # A drain is due within GATHER and has not started: it claims what is queued meanwhile. Every drain
        # clears it, the first as the scheduler starts.
        self._gathering = False

    def start(self) -> None:
        self.scheduler.every(OUTBOX, timedelta(seconds=15), self.drain_outbox)
        self.scheduler.every(SLA, self.app.config.sla.sweep_interval, self.sweep_sla)
        self.scheduler.start()

    def wake(self, job: str, at: datetime | None = None) -> None:
        """Run `job` at `at`, or when woken for now: at once, the outbox's drain within GATHER."""
        if job == OUTBOX and at is None:
            if self._gathering:
                return  # each decided batch wakes it: under load, hundreds of times a second
            self._gathering = True
            at = self.app.clock.now() + GATHER
        self.scheduler.wake(job, at)

    async def drain_outbox(self) -> None:
        self._gathering = False  # what is queued after its claim needs the next drain
        await self.app.sender.drain()
        # Only ahead: what is due already is either leased by another instance (its sweep sends it) or was
        # queued during this drain by someone who woke the job (it runs again at once).
        if (due := await self.app.sender.next_due()) is not None and due > self.app.clock.now():
            self.scheduler.wake(OUTBOX, due)

    async def sweep_sla(self) -> None:
        """Assign the tickets due for it, record missed deadlines; run again when the next one can change."""
        try:
            sweep = await self.app.sla.sweep()
        except TransientError as exc:
            log.error("cannot check deadlines now: %s; the next sweep retries", exc)
            return
        if sweep.assigned:
            self.scheduler.wake(OUTBOX)  # the introductions just queued
        if sweep.next_check is not None:
            self.scheduler.wake(SLA, sweep.next_check)

    async def finish(self, within: float) -> None:
        """Send what is due, for `within` seconds at most, then stop the timer."""
        sending = asyncio.create_task(self.app.sender.drain(), name="last drain")
        # No new job runs; the one in progress (a drain of its own, a sweep) finishes.
        stopping = asyncio.create_task(self.scheduler.stop(2 * DRAIN_TIMEOUT), name="scheduler stop")
        await asyncio.wait([sending, stopping], timeout=within)
        self.app.sender.stop()  # out of time: every drain ends after its messages in hand, gives back the rest
        await stopping
        try:
            await sending
        except TransientError as exc:
            log.error("could not send the outbox before stopping: %s", exc)


class Local:
    """The leases, and the intake and/or the sending, in this process."""

    def __init__(
        self, app: App, *, intake: bool = True, sending: bool = True, tally: Tally | None = None,
        elsewhere: Elsewhere | None = None,
    ) -> None:
        self.app = app
        self.runs_intake = intake
        self.sending = Sending(app) if sending else None
        self.elsewhere = elsewhere
        self.tasks: list[asyncio.Task[None]] = []
        self.intake: asyncio.Task[None] | None = None
        if tally is not None:
            if intake:
                app.processor.metrics = tally
            if sending:
                app.sender.metrics = tally

    def _wake(self, job: str, at: datetime | None = None) -> None:
        if self.sending is not None:
            self.sending.wake(job, at)
        elif self.elsewhere is not None:
            self.elsewhere(job, at)

    async def start(self) -> None:
        app = self.app
        await app.leases.take_back()  # this instance's claims from before a crash: free now, not in a lease
        self.tasks.append(asyncio.create_task(app.leases.run(), name="leases"))
        if self.runs_intake:
            app.processor.on_outcome = lambda _outcome: self._wake(OUTBOX)
            loop = asyncio.get_running_loop()
            # Committed on a database thread: each new clock's first instant (mailbot.workflow) wakes the sweep.
            app.workflow.deadlines = lambda at: call_on(loop, self._wake, SLA, at)
            self.intake = asyncio.create_task(app.processor.run(), name="intake")
            self.tasks.append(self.intake)
        if self.sending is not None:
            self.sending.start()

    def stored(self) -> None:
        """A door committed mail: the intake's turn."""
        self.app.processor.wake()

    def health(self) -> str | None:
        """None while every loop here is alive, else which one stopped and why."""
        for task in self.tasks:
            if task.done():
                error = None if task.cancelled() else task.exception()
                return f"{task.get_name()} stopped" + (f": {type(error).__name__}: {error}" if error else "")
        if self.sending is not None and not self.sending.scheduler.running:
            return "the scheduler is not running"
        return None

    async def stop(self, within: float = DRAIN_TIMEOUT) -> None:
        """The intake's batch in hand and what is pending, then what is due to be sent, each for `within`
        seconds at most; then every claim still held is given back."""
        if self.intake is not None:
            self.app.processor.stop(within)
            await asyncio.wait([self.intake], timeout=2 * DRAIN_TIMEOUT)  # a batch in hand ends well before
        if self.sending is not None:
            await self.sending.finish(within)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.runs_intake:
            self.app.processor.close()
            self.app.workflow.deadlines = None  # this loop is gone
        await self.app.leases.give_back()  # what a failure left claimed: free for the next start at once


def call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """`callback(*args)` on `loop`'s thread: workflow's deadlines are told on a database thread."""
    loop.call_soon_threadsafe(callback, *args)

"""The parent's side of the worker processes (layout "processes"): start them, carry their wake-ups and
counts, restart one that dies, stop them in order.

`mailbot run` keeps the doors (listener, IMAP watchers, /metrics) and systemd's protocol in the process
systemd started, and runs the intake and the sender in one worker process each (mailbot.workers), so the
doors keep answering on one core while the backlog is worked on the others. The parent carries the
wake-ups between them: a door commit wakes the intake; a decided batch wakes the sender's outbox drain; a
new ticket's first SLA instant (mailbot.workflow's `deadlines`, told in the intake) wakes the sender's
sweep at that instant. Counts made in a worker reach the parent's /metrics.

A worker that dies unexpectedly is started again at once; the new one takes back its predecessor's claims
as it starts (mailbot.leases: a claim names its process, which is gone). Five deaths within a minute are a
crash loop: the daemon stops with a non-zero exit rather than spin. Stopping tells the intake to drain
first (its last decisions queue the last confirmations), then the sender; a worker that overstays its
bound is killed, and the claims of every ended worker are freed before the parent exits.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from mailbot import workers
from mailbot.app import App
from mailbot.errors import WorkerError
from mailbot.metrics import Metrics
from mailbot.runners import DRAIN_TIMEOUT, OUTBOX, SLA
from mailbot.workers import INTAKE, ROLES, SENDER, Channel

log = logging.getLogger("mailbot.supervisor")
START_TIMEOUT = 60.0  # a worker builds its App and reaches its database within this, or the start fails
CRASH_LOOP = (5, 60.0)  # this many unexpected deaths of one worker within this many seconds stop the daemon


@dataclass
class Worker:
    role: str
    process: BaseProcess
    channel: Channel
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


def ended_why(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Workers:
    def __init__(self, app: App, *, metrics: Metrics | None, on_failure: Callable[[str], None]) -> None:
        self.app = app
        self.metrics = metrics
        self.on_failure = on_failure  # told once, with the reason, when a worker crash-loops
        self.context = multiprocessing.get_context("spawn")  # no fork of a running event loop and engine
        self.workers: dict[str, Worker] = {}
        self.deaths: dict[str, deque[float]] = {role: deque(maxlen=CRASH_LOOP[0]) for role in ROLES}
        self.last_death: dict[str, str] = {}
        self.failure: str | None = None
        self.stopping = False

    async def start(self) -> None:
        for role in ROLES:
            self._spawn(role)
        try:
            for role in ROLES:
                await self._ready(role)
        except WorkerError:
            await self.stop(0.0)
            raise

    def _spawn(self, role: str) -> None:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(
            target=workers.main, name=f"mailbot-{role}",
            args=(role, self.app.config, self.app.templates, logging.getLogger().isEnabledFor(logging.DEBUG), theirs),
            daemon=True,  # should the parent end without stopping it (a failed start), it is ended too
        )
        process.start()
        theirs.close()
        worker = self.workers[role] = Worker(role, process, Channel(ours))
        worker.channel.listen(lambda message: self._received(worker, message), lambda: None)
        asyncio.get_running_loop().add_reader(process.sentinel, self._ended, worker)
        log.info("started the %s worker (pid %s)", role, process.pid)

    async def _ready(self, role: str) -> None:
        worker = self.workers[role]
        ready, ended = asyncio.ensure_future(worker.ready.wait()), asyncio.ensure_future(worker.ended.wait())
        await asyncio.wait([ready, ended], timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        ended.cancel()
        if not worker.ready.is_set():
            why = ended_why(worker.process.exitcode) if worker.ended.is_set() else f"not ready in {START_TIMEOUT:g} s"
            raise WorkerError(f"the {role} worker did not start: {why}")

    def _received(self, worker: Worker, message: Any) -> None:
        if message == "ready":
            worker.ready.set()
        elif message == OUTBOX or (isinstance(message, tuple) and message[0] == SLA):
            self._to_sender(message)
        elif isinstance(message, tuple) and message[0] == "counts" and self.metrics is not None:
            self.metrics.add(*message[1:])

    def _to_sender(self, message: Any) -> None:
        if (sender := self.workers.get(SENDER)) is not None and not sender.ended.is_set():
            sender.channel.post(message)  # one that died meanwhile sweeps and drains everything as it starts

    def stored(self) -> None:
        """A door committed mail: the intake's turn."""
        if (intake := self.workers.get(INTAKE)) is not None and not intake.ended.is_set():
            intake.channel.post("stored")

    def _ended(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        worker.channel.read()  # what it said last (its last counts) may still be in the pipe
        worker.process.join()  # reaped: its process id is gone, so its successor may take back its claims
        worker.channel.close()
        worker.ended.set()
        why = ended_why(worker.process.exitcode)
        if self.stopping:
            return
        self.last_death[worker.role] = f"the {worker.role} worker (pid {worker.process.pid}) {why}"
        deaths = self.deaths[worker.role]
        deaths.append(time.monotonic())
        count, window = CRASH_LOOP
        if len(deaths) == count and deaths[-1] - deaths[0] <= window:
            self.failure = f"the {worker.role} worker died {count} times within {window:g} s (last: {why}): giving up"
            log.critical("%s", self.failure)
            self.on_failure(self.failure)
            return
        log.error("%s; starting another", self.last_death[worker.role])
        self._spawn(worker.role)

    def health(self) -> str | None:
        """None while both workers run, else which one does not and why (one that died: until its
        successor is ready)."""
        if self.failure is not None:
            return self.failure
        for role in ROLES:
            worker = self.workers.get(role)
            if worker is None or not worker.ready.is_set() or worker.ended.is_set():
                starting = f"the {role} worker is starting"
                return f"{self.last_death[role]}; {starting}" if role in self.last_death else starting
        return None

    async def stop(self, within: float = DRAIN_TIMEOUT) -> None:
        """The intake drains, then the sender (each for `within` seconds, as in one process); what an ended
        worker still claimed is freed."""
        self.stopping = True
        for role in ROLES:  # in this order: the intake's last decisions queue what the sender sends
            if (worker := self.workers.get(role)) is not None and not worker.ended.is_set():
                worker.channel.post(("stop", within))
                await self._end(worker, 2 * within + DRAIN_TIMEOUT)
        await self.app.leases.take_back()  # a killed worker's claims (their process is gone): free at once

    async def _end(self, worker: Worker, bound: float) -> None:
        try:
            await asyncio.wait_for(worker.ended.wait(), bound)
        except TimeoutError:
            log.error("the %s worker did not stop within %g s: killing it", worker.role, bound)
            worker.process.kill()
            await worker.ended.wait()
        if worker.process.exitcode != 0:
            log.warning("the %s worker %s", worker.role, ended_why(worker.process.exitcode))


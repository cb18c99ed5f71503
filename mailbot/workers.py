"""A worker process of `mailbot run`: the intake or the sender, on a core of its own (mailbot.supervisor).

Started with multiprocessing's spawn (a fresh interpreter: nothing of the parent's event loop, threads or
database connections), it builds its own App from the configuration and runs one loop of mailbot.runners.
It speaks with the parent over one pipe, in small messages (`Channel`), never about mail itself (that is in
the database):

  parent -> worker: "stored" (a door committed mail), "outbox", ("sla", at) (wake that job), ("stop", within)
  worker -> parent: "ready", "outbox" and ("sla", at) (for the other worker), ("counts", decided, delivered)

Its writes give way to the doors' (mailbot.store.writers); on PostgreSQL, where the doors and the workers
share only the CPU, it also runs at a lower scheduling priority (`WORKER_NICE`). SIGINT is ignored: Ctrl-C in
a terminal reaches the whole process group, and the parent coordinates the stop. The pipe's end (the parent
died) stops it at once: the message in hand is finished, every claim given back. SIGTERM drains as the
parent's "stop" does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import select
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mailbot.clock import Clock
from mailbot.config import Config
from mailbot.runners import DRAIN_TIMEOUT, GATHER, Local

log = logging.getLogger("mailbot.workers")
INTAKE, SENDER = "intake", "sender"
ROLES = (INTAKE, SENDER)
# How much lower the workers' scheduling priority is than the doors' on PostgreSQL: with the intake at full
# speed beside them, a door with a 250 to write waited for a core. On 2 cores, 10 sessions (bench/RESULTS.md
# section 18) the doors accepted at 60 to 72% of a null handler's rate instead of 46 to 58%, the backlog
# became tickets about as fast. Not on SQLite: there the doors also wait for the one write lock, and a worker
# preempted while it holds the lock keeps them waiting longer (priority inversion); measured there with 5,
# end to end fell by 4% and the doors gained nothing.
WORKER_NICE = 10


class Channel:
    """One end of a worker's pipe on an event loop: messages are read as they come, and posted ones are
    written once per turn of the loop, the same message once (a hundred door commits wake the intake once)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        # Kept for the pipe's life: Connection.poll builds, fills and closes a selector on every call.
        self._poller = select.poll()
        self._poller.register(connection.fileno(), select.POLLIN)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[Any] = []
        self._on_message: Callable[[Any], None] = lambda _: None
        self._on_end: Callable[[], None] = lambda: None

    def listen(self, on_message: Callable[[Any], None], on_end: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_message, self._on_end = on_message, on_end
        self._loop.add_reader(self.connection.fileno(), self.read)

    def read(self) -> None:
        """Every message waiting in the pipe, each to `on_message`; `on_end` once the other end is gone."""
        if self.connection.closed:
            return
        try:
            while self._poller.poll(0):  # readable, or the other end gone (recv raises EOFError then)
                self._on_message(self.connection.recv())
        except (EOFError, OSError):
            assert self._loop is not None
            self._loop.remove_reader(self.connection.fileno())
            self._on_end()

    def post(self, message: Any) -> None:
        """Send `message` at the end of this turn of the loop (on the loop's thread only)."""
        if not self._queued and self._loop is not None:
            self._loop.call_soon(self.flush)
        if message not in self._queued:
            self._queued.append(message)

    def flush(self) -> None:
        queued, self._queued = self._queued, []
        try:
            for message in queued:
                # Plain pickle: Connection.send's ForkingPickler (a pickler object per message, for the
                # sockets and handles it can carry) cost seven times as much for these small values.
                self.connection.send_bytes(pickle.dumps(message))
        except OSError:  # the other end is gone: the parent restarts a worker, a worker stops (its `on_end`)
            pass

    def close(self) -> None:
        if self._loop is not None and not self.connection.closed:
            self._loop.remove_reader(self.connection.fileno())
        self.connection.close()


class Told:
    """The instants the other process's jobs were woken for, so that a wake-up that changes nothing is not
    sent: a job woken for an instant still to come runs then, or sooner, and each run re-arms the job at its
    next instant read from the database (mailbot.runners), so a later instant told meanwhile would change
    nothing there (mailbot.scheduler keeps the earliest). The intake told the sweep a new instant for each
    of its batches: a pickle, a pipe write and a wake-up of a loop in three processes each time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._at: dict[str, datetime] = {}

    def needed(self, job: str, at: datetime) -> bool:
        """Whether waking `job` at `at` may change when it runs (then it counts as told)."""
        told = self._at.get(job)
        if told is not None and self.clock.now() <= told <= at:
            return False
        self._at[job] = at
        return True


class Paced:
    """Wake-ups for now, posted at most once per `every` seconds for each job: the intake woke the outbox
    drain for each batch it decided (a hundred times a second under load), each wake-up crossing two pipes
    and three event loops while the drain it woke was gathering anyway (mailbot.runners.GATHER). One asked
    for meanwhile is posted when the interval ends, so every commit is still followed by a wake-up."""

    def __init__(self, post: Callable[[Any], None], every: float) -> None:
        self.post = post
        self.every = every
        self._last: dict[str, float] = {}  # loop time of each job's last wake-up posted
        self._later: set[str] = set()  # jobs whose wake-up waits for the interval's end

    def wake(self, job: str) -> None:
        if job in self._later:
            return
        loop = asyncio.get_running_loop()
        wait = self._last.get(job, -self.every) + self.every - loop.time()
        if wait > 0:
            self._later.add(job)
            loop.call_later(wait, self._post, job)
        else:
            self._post(job)

    def _post(self, job: str) -> None:
        self._later.discard(job)
        self._last[job] = asyncio.get_running_loop().time()
        self.post(job)


class Counts:
    """The worker's Tally (mailbot.metrics): what it counted, sent to the parent's /metrics once per turn."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.actions: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()

    def decided(self, actions: Iterable[str]) -> None:
        self._soon()
        self.actions.update(actions)

    def delivered(self, kind: str) -> None:
        self._soon()
        self.kinds[kind] += 1

    def _soon(self) -> None:
        if not (self.actions or self.kinds):  # the first count of this turn
            asyncio.get_running_loop().call_soon(self.send)

    def send(self) -> None:
        if not (self.actions or self.kinds):
            return
        self.channel.post(("counts", dict(self.actions), dict(self.kinds)))
        self.actions.clear()
        self.kinds.clear()


def main(role: str, config: Config, templates: Path, verbose: bool, connection: Connection) -> None:
    """The worker process's entry point (multiprocessing's target): exits 0 after a clean stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mailbot import logs

    logs.setup(verbose)
    sys.exit(asyncio.run(_serve(role, config, templates, connection)))


async def _serve(role: str, config: Config, templates: Path, connection: Connection) -> int:
    from mailbot.app import App

    app = App(config, templates=templates, gives_way=True)
    if not app.db.is_sqlite:
        os.nice(WORKER_NICE)  # relative to the parent's, whatever systemd's Nice= set it to
    channel = Channel(connection)
    counts = Counts(channel) if config.metrics.listen else None
    told = Told(app.clock)
    paced = Paced(channel.post, GATHER.total_seconds())
    stop = asyncio.Event()
    within = DRAIN_TIMEOUT

    def elsewhere(job: str, at: datetime | None) -> None:
        if at is None:
            paced.wake(job)
        elif told.needed(job, at):
            channel.post((job, at))

    local = Local(app, intake=role == INTAKE, sending=role == SENDER, tally=counts, elsewhere=elsewhere)

    def on_message(message: Any) -> None:
        nonlocal within
        if message == "stored":
            local.stored()
        elif isinstance(message, tuple) and message[0] == "stop":
            within = message[1]
            stop.set()
        elif local.sending is not None:  # "outbox", ("sla", at)
            local.sending.wake(*message) if isinstance(message, tuple) else local.sending.wake(message)

    def on_end() -> None:  # the parent is gone: nobody takes mail any more
        nonlocal within
        within = 0.0
        stop.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    channel.listen(on_message, on_end)
    failure = None
    try:
        await local.start()
        # Everything built so far (modules, the App, SQLAlchemy's mappers and caches) lives as long as the
        # process: out of the collector's sight, so its full collections walk only what the work makes.
        gc.freeze()
        channel.post("ready")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([stopping, *local.tasks], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if (failure := local.health()) is not None:
            log.error("the %s worker stops: %s", role, failure)
            within = 0.0
        await local.stop(within)
    finally:
        if counts is not None:
            counts.send()
        channel.flush()
        channel.close()
        app.close()
    return 0 if failure is None else 1

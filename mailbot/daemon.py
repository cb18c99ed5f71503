"""`mailbot run`: start, serve, drain, stop — reading top to bottom.

Startup: schema check, the claims of this instance's previous run taken back, the operator's endpoint
(`[metrics] listen`), listener, intake runner, sender, watchers, then READY=1 for systemd.
Shutdown (SIGTERM/SIGINT): /readyz says "stopping", STOPPING=1, stop accepting connections, let sessions in
flight finish their DATA (bounded), commit what the door holds, let the intake finish its batch in hand and
what is pending, send what is due (each bounded), give back whatever is still claimed, close the endpoint,
exit 0.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.orm import Session

from mailbot import listener, notify
from mailbot.app import App
from mailbot.door import Door
from mailbot.errors import ConfigError, TransientError
from mailbot.imap import MailboxWatcher
from mailbot.imap_door import DatabaseCursors, ImapSink
from mailbot.scheduler import Scheduler
from mailbot.store import overview

if TYPE_CHECKING:
    from mailbot.metrics import Metrics

log = logging.getLogger("mailbot")
DRAIN_TIMEOUT = 20.0
PROBE_TIMEOUT = 5.0  # /readyz: a database that does not answer within this is not reachable


class Daemon:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config
        self.stopping = asyncio.Event()
        self.scheduler = Scheduler(app.clock)
        self.metrics = _metrics() if self.config.metrics.listen else None
        app.processor.metrics = app.sender.metrics = self.metrics
        self.door = Door(app.db, app.clock, on_stored=app.processor.wake, metrics=self.metrics)
        self.servers: list[asyncio.Server] = []
        self.handlers: list[listener.Handler] = []
        self.watchers: list[MailboxWatcher] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.endpoint: asyncio.Server | None = None
        self.intake: asyncio.Task[None] | None = None

    def hostname(self) -> str:
        return self.config.smtp.hostname or self.app.identity.domain

    async def start(self) -> None:
        app = self.app
        await self._open_endpoint()  # first: a port in use refuses the start before anything else
        await app.leases.take_back()  # this instance's claims from before a crash: free now, not in a lease
        self.tasks.append(asyncio.create_task(app.leases.run(), name="leases"))
        app.processor.on_outcome = lambda _outcome: self.scheduler.wake("outbox")
        loop = asyncio.get_running_loop()
        # Committed on a database thread: each new clock's first instant (mailbot.workflow) wakes the sweep then.
        app.workflow.deadlines = lambda at: self._wake_threadsafe(loop, "sla", at)
        if self.config.smtp.enabled:
            handler = listener.Handler(
                self.door, self.config.smtp, self.config.support.addresses, app.clock, self.hostname(),
                metrics=self.metrics,
            )
            server = await self._listen(handler)
            self.servers.append(server)
            self.handlers.append(handler)
            for sock in server.sockets:
                log.info("listening for %s on %s", self.config.smtp.protocol.upper(), sock.getsockname()[:2])
        self.intake = asyncio.create_task(app.processor.run(), name="intake")
        self.tasks.append(self.intake)
        sink, cursors = ImapSink(self.door, app.processor), DatabaseCursors(app.db, app.clock)
        for mailbox in self.config.imap:
            watcher = MailboxWatcher(mailbox, sink, cursors, log=logging.getLogger(f"mailbot.imap.{mailbox.username}"))
            self.watchers.append(watcher)
            self.tasks.append(asyncio.create_task(watcher.run(), name=f"imap {watcher.key}"))
            log.info("watching IMAP mailbox %s", watcher.key)
        self.scheduler.every("outbox", timedelta(seconds=15), self._drain_outbox)
        self.scheduler.every("sla", self.config.sla.sweep_interval, self._sweep_sla)
        self.scheduler.start()
        if (interval := notify.watchdog_interval()) is not None:
            self.tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        notify.ready()
        notify.status("accepting mail")
        log.info("mailbot started")

    async def _open_endpoint(self) -> None:
        if (address := self.config.metrics.address) is None:
            return
        from mailbot.endpoint import Endpoint  # prometheus_client: only for a daemon that serves /metrics

        endpoint = Endpoint(metrics=self._metrics_text, healthy=self._health, ready=self._readiness)
        try:
            self.endpoint = await endpoint.start(*address)
        except OSError as exc:  # asyncio words it "error while attempting to bind on address ...": say it plainly
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"metrics.listen: cannot listen on {self.config.metrics.listen}: {why}") from None
        log.info("serving /metrics, /healthz and /readyz on %s", self.endpoint.sockets[0].getsockname()[:2])

    async def _metrics_text(self) -> bytes:
        """The exposition, with the gauges read from the database now (on a database thread)."""
        assert self.metrics is not None  # the endpoint is opened only with metrics
        try:
            state = await self.app.db.run(overview.read, self.app.clock.now())
        except TransientError as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            state = None
        self.metrics.observe(state)
        return self.metrics.exposition()

    async def _health(self) -> str | None:
        """None while every loop of the daemon is alive, else which one stopped and why."""
        for task in self.tasks:
            if task.done():
                error = None if task.cancelled() else task.exception()
                return f"{task.get_name()} stopped" + (f": {type(error).__name__}: {error}" if error else "")
        if not self.scheduler.running:
            return "the scheduler is not running"
        return None

    async def _readiness(self) -> str | None:
        """None when the daemon can take mail: alive, not stopping, listening, its database answering."""
        if (unhealthy := await self._health()) is not None:
            return unhealthy
        if self.stopping.is_set():
            return "stopping"
        if any(not server.is_serving() for server in self.servers):
            return "the listener is not accepting connections"
        try:
            await asyncio.wait_for(self.app.db.run(_ping), PROBE_TIMEOUT)
        except TimeoutError:
            return f"the database did not answer within {PROBE_TIMEOUT:g} s"
        except TransientError as exc:
            return f"the database is unreachable: {exc}"
        return None

    async def _listen(self, handler: listener.Handler) -> asyncio.Server:
        """The listener's socket, or one line saying why there is none (a port in use, a privileged port)."""
        smtp = self.config.smtp
        try:
            return await listener.start(handler, smtp)
        except OSError as exc:
            hint = {
                errno.EADDRINUSE: " (another mailbot or an MTA listens there)",
                errno.EACCES: " (ports below 1024 need CAP_NET_BIND_SERVICE)",
            }.get(exc.errno or 0, "")
            reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's strerror repeats the address
            raise ConfigError(f"smtp: cannot listen on {smtp.host}:{smtp.port}: {reason}{hint}") from None

    def _wake_threadsafe(self, loop: asyncio.AbstractEventLoop, job: str, at: datetime) -> None:
        loop.call_soon_threadsafe(self.scheduler.wake, job, at)

    async def _drain_outbox(self) -> None:
        await self.app.sender.drain()
        # Only ahead: what is due already is either leased by another instance (its sweep sends it) or was
        # queued during this drain by someone who woke the job (it runs again at once).
        if (due := await self.app.sender.next_due()) is not None and due > self.app.clock.now():
            self.scheduler.wake("outbox", due)

    async def _sweep_sla(self) -> None:
        """Assign the tickets due for it, record missed deadlines; run again when the next one can change."""
        try:
            sweep = await self.app.sla.sweep()
        except TransientError as exc:
            log.error("cannot check deadlines now: %s; the next sweep retries", exc)
            return
        if sweep.assigned:
            self.scheduler.wake("outbox")  # the introductions just queued
        if sweep.next_check is not None:
            self.scheduler.wake("sla", sweep.next_check)

    async def _watchdog(self, interval: float) -> None:
        while True:
            notify.watchdog()
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        notify.stopping()
        log.info("stopping: no new connections; finishing the work in hand")
        for server in self.servers:
            server.close()
        for handler in self.handlers:
            if not await handler.drained(DRAIN_TIMEOUT):
                log.warning("gave up waiting for %d message(s) being received", handler.in_flight)
        await asyncio.gather(*(watcher.stop() for watcher in self.watchers))  # each finishes its message, logs out
        await self.door.close()
        await self._finish_work()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.app.processor.close()
        await self.app.leases.give_back()  # what a failure left claimed: free for the next start at once
        self.app.workflow.deadlines = None  # this loop is gone
        if self.endpoint is not None:
            self.endpoint.close()
            await self.endpoint.wait_closed()
        log.info("mailbot stopped")

    async def _finish_work(self) -> None:
        """The intake's batch in hand and what is pending, then what is due to be sent, each for DRAIN_TIMEOUT
        at most; nothing is cut in the middle (a send between the relay's 250 and its record would go out again)."""
        if self.intake is not None:
            self.app.processor.stop(DRAIN_TIMEOUT)
            await asyncio.wait([self.intake], timeout=2 * DRAIN_TIMEOUT)  # a batch in hand ends well before
        sending = asyncio.create_task(self.app.sender.drain(), name="last drain")
        # No new job runs; the one in progress (a drain of its own, a sweep) finishes.
        stopping = asyncio.create_task(self.scheduler.stop(2 * DRAIN_TIMEOUT), name="scheduler stop")
        await asyncio.wait([sending, stopping], timeout=DRAIN_TIMEOUT)
        self.app.sender.stop()  # out of time: every drain ends after its message in hand, gives back the rest
        await stopping
        try:
            await sending
        except TransientError as exc:
            log.error("could not send the outbox before stopping: %s", exc)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        await self.start()
        await self.stopping.wait()
        await self.stop()


def _metrics() -> Metrics:
    from mailbot.metrics import Metrics  # prometheus_client: only for a daemon that serves /metrics

    return Metrics()


def _ping(session: Session) -> None:
    session.execute(text("SELECT 1"))


def run(app: App) -> int:
    asyncio.run(Daemon(app).serve())
    return 0

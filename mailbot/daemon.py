"""`mailbot run`: start, serve, drain, stop — reading top to bottom.

The layout (`[daemon] layout`): the doors (listener, IMAP watchers, the operator's endpoint) and systemd's
protocol live in this process; the work behind them (mailbot.runners: the intake, the outbox and the
deadlines) runs here too ("single"), or in two worker processes this one supervises (mailbot.supervisor),
each on a core of its own ("processes", the default where two CPUs are there).

Startup: schema check, the operator's endpoint (`[metrics] listen`) and the listener (a port in use refuses
the start before any worker starts), the work (the claims of this instance's previous run taken back
first), watchers, then READY=1 for systemd.
Shutdown (SIGTERM/SIGINT): /readyz says "stopping", STOPPING=1, stop accepting connections, let sessions in
flight finish their DATA (bounded), commit what the door holds, let the intake finish its batch in hand and
what is pending, send what is due (each bounded), give back whatever is still claimed, close the endpoint,
exit 0 (1 when a worker process crash-looped).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.orm import Session

from mailbot import listener, notify
from mailbot.app import App
from mailbot.door import Door
from mailbot.errors import ConfigError, TransientError
from mailbot.imap import MailboxWatcher
from mailbot.imap_door import DatabaseCursors, ImapSink
from mailbot.runners import DRAIN_TIMEOUT, Local
from mailbot.store import overview

if TYPE_CHECKING:
    from mailbot.metrics import Metrics
    from mailbot.supervisor import Workers

log = logging.getLogger("mailbot")
PROBE_TIMEOUT = 5.0  # /readyz: a database that does not answer within this is not reachable


class Daemon:
    def __init__(self, app: App, *, separate: bool = False) -> None:
        """`separate`: the intake and the sender in worker processes (mailbot.supervisor), else here."""
        self.app = app
        self.config = app.config
        self.stopping = asyncio.Event()
        self.failure: str | None = None  # why the daemon stops on its own (a worker's crash loop)
        self.metrics = _metrics() if self.config.metrics.listen else None
        self.work: Local | Workers = self._separate() if separate else Local(app, tally=self.metrics)
        self.door = Door(app.db, app.clock, on_stored=self.work.stored, metrics=self.metrics)
        self.servers: list[asyncio.Server] = []
        self.handlers: list[listener.Handler] = []
        self.watchers: list[MailboxWatcher] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.endpoint: asyncio.Server | None = None

    def _separate(self) -> Workers:
        from mailbot.supervisor import Workers  # multiprocessing: only for a daemon that starts workers

        return Workers(self.app, metrics=self.metrics, on_failure=self._failed)

    def _failed(self, reason: str) -> None:
        self.failure = reason
        self.stopping.set()

    def hostname(self) -> str:
        return self.config.smtp.hostname or self.app.identity.domain

    async def start(self) -> None:
        app = self.app
        await self._open_endpoint()  # first: a port in use refuses the start before anything else
        if self.config.smtp.enabled:
            handler = listener.Handler(
                self.door, self.config.smtp, self.config.support.addresses, app.clock, self.hostname(),
                metrics=self.metrics,
            )
            self.servers.append(await self._listen(handler))
            self.handlers.append(handler)
        await self.work.start()  # mail the listener takes meanwhile waits, stored, for the intake's first pass
        for sock in (sock for server in self.servers for sock in server.sockets):
            log.info("listening for %s on %s", self.config.smtp.protocol.upper(), sock.getsockname()[:2])
        sink, cursors = ImapSink(self.door, app.db), DatabaseCursors(app.db, app.clock)
        for mailbox in self.config.imap:
            watcher = MailboxWatcher(mailbox, sink, cursors, log=logging.getLogger(f"mailbot.imap.{mailbox.username}"))
            self.watchers.append(watcher)
            self.tasks.append(asyncio.create_task(watcher.run(), name=f"imap {watcher.key}"))
            log.info("watching IMAP mailbox %s", watcher.key)
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
        return self.work.health()

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
        await self.work.stop(DRAIN_TIMEOUT)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.endpoint is not None:
            self.endpoint.close()
            await self.endpoint.wait_closed()
        log.info("mailbot stopped")

    async def serve(self) -> int:
        """Until SIGTERM or SIGINT, then drain; the exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        await self.start()
        await self.stopping.wait()
        await self.stop()
        return 0 if self.failure is None else 1


def _metrics() -> Metrics:
    from mailbot.metrics import Metrics  # prometheus_client: only for a daemon that serves /metrics

    return Metrics()


def _ping(session: Session) -> None:
    session.execute(text("SELECT 1"))


def run(app: App) -> int:
    separate = app.config.daemon.separate(len(os.sched_getaffinity(0)))
    log.info("working in %s", "three processes: the doors, the intake, the sender" if separate else "one process")
    return asyncio.run(Daemon(app, separate=separate).serve())

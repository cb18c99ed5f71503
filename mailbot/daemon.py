"""`mailbot run`: start, serve, drain, stop — reading top to bottom.

Startup: schema check, the claims of this instance's previous run taken back, listener, intake runner,
sender, watchers, then READY=1 for systemd.
Shutdown (SIGTERM/SIGINT): STOPPING=1, stop accepting connections, let sessions in flight finish their DATA
(bounded), commit what the door holds, let the intake finish its batch in hand and what is pending, send
what is due (each bounded), give back whatever is still claimed, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import datetime, timedelta

from mailbot import listener, notify
from mailbot.app import App
from mailbot.door import Door
from mailbot.errors import TransientError
from mailbot.imap import MailboxWatcher
from mailbot.imap_door import DatabaseCursors, ImapSink
from mailbot.scheduler import Scheduler

log = logging.getLogger("mailbot")
DRAIN_TIMEOUT = 20.0


class Daemon:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config
        self.stopping = asyncio.Event()
        self.scheduler = Scheduler(app.clock)
        self.door = Door(app.db, app.clock, on_stored=app.processor.wake)
        self.servers: list[asyncio.Server] = []
        self.handlers: list[listener.Handler] = []
        self.watchers: list[MailboxWatcher] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.intake: asyncio.Task[None] | None = None

    def hostname(self) -> str:
        return self.config.smtp.hostname or self.app.identity.domain

    async def start(self) -> None:
        app = self.app
        await app.leases.take_back()  # this instance's claims from before a crash: free now, not in a lease
        self.tasks.append(asyncio.create_task(app.leases.run(), name="leases"))
        app.processor.on_outcome = lambda _outcome: self.scheduler.wake("outbox")
        loop = asyncio.get_running_loop()
        # Committed on a database thread: each new clock's first instant (mailbot.workflow) wakes the sweep then.
        app.workflow.deadlines = lambda at: self._wake_threadsafe(loop, "sla", at)
        if self.config.smtp.enabled:
            handler = listener.Handler(
                self.door, self.config.smtp, self.config.support.addresses, app.clock, self.hostname()
            )
            server = await listener.start(handler, self.config.smtp)
            self.servers.append(server)
            self.handlers.append(handler)
            for sock in server.sockets:
                log.info("listening for %s on %s", self.config.smtp.protocol.upper(), sock.getsockname()[:2])
        self.intake = asyncio.create_task(app.processor.run(), name="intake")
        self.tasks.append(self.intake)
        sink, cursors = ImapSink(self.door, app.processor, app.db), DatabaseCursors(app.db, app.clock)
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
        await self.app.leases.give_back()  # what a failure left claimed: free for the next start at once
        self.app.workflow.deadlines = None  # this loop is gone
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


def run(app: App) -> int:
    asyncio.run(Daemon(app).serve())
    return 0

"""The IMAP watchers' side of the one door: the watcher's Sink and CursorStore over the real store."""

from __future__ import annotations

import asyncio
import time

from mailbot.clock import Clock
from mailbot.door import Door
from mailbot.store import Database, cursors
from mailbot.store import inbound as inbound_store

# How long a watcher waits for the intake to decide what it stored before it settles the batch anyway: a
# message the intake could not decide by then (a DNS outage defers it, the intake worker is restarting) is
# stored, and counts as readable. Polled, first often, then less: the intake may run in another process or
# in another instance on the same database, and the database is where its decision is.
PATIENCE = 60.0  # seconds
POLL = (0.02, 0.5)  # the first and the longest pause between looks, in seconds


class ImapSink:
    """Stores fetched messages through the door, as the SMTP listener does; the intake runner decides them.
    The watcher then asks which could not be read, so they go to the failed folder."""

    def __init__(self, door: Door, db: Database) -> None:
        self.door = door
        self.db = db

    async def accept(self, raw: bytes, *, source: str) -> int:
        return await self.door.accept(raw, source=source)

    async def unreadable(self, stored: list[int]) -> set[int]:
        waiting, failed = set(stored), set()
        give_up, pause = time.monotonic() + PATIENCE, POLL[0]
        while waiting:
            settled = await self.db.run(inbound_store.settled, list(waiting))
            failed |= {inbound_id for inbound_id, unread in settled.items() if unread}
            waiting -= settled.keys()
            if not waiting or time.monotonic() >= give_up:
                break
            await asyncio.sleep(pause)
            pause = min(2 * pause, POLL[1])
        return failed


class DatabaseCursors:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def load(self, mailbox: str) -> tuple[int | None, int]:
        return await self.db.run(cursors.load, mailbox)

    async def save(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        await self.db.run(cursors.save, mailbox, uidvalidity, last_uid, self.clock.now())

"""The IMAP watchers' side of the one door: the watcher's Sink and CursorStore over the real store."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mailbot.clock import Clock
from mailbot.door import Door
from mailbot.processor import Processor
from mailbot.store import Database, cursors


@dataclass(frozen=True)
class Stored:
    inbound_id: int
    parse_failed: bool


class ImapSink:
    """Stores a fetched message through the door, then runs the intake on it at once, so the watcher knows
    whether it belongs in the failed folder (and IMAP mail becomes a ticket without waiting for a sweep)."""

    def __init__(self, door: Door, processor: Processor) -> None:
        self.door = door
        self.processor = processor

    async def accept(self, raw: bytes, *, source: str) -> Stored:
        inbound_id = await self.door.accept(raw, source=source)
        # Off the database's thread: process_one reads (parse, DNS) before it opens its transaction.
        outcome = await asyncio.to_thread(self.processor.process_one, inbound_id)
        return Stored(inbound_id, parse_failed=outcome.action == "failed")


class DatabaseCursors:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def load(self, mailbox: str) -> tuple[int | None, int]:
        return await self.db.run(cursors.load, mailbox)

    async def save(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        await self.db.run(cursors.save, mailbox, uidvalidity, last_uid, self.clock.now())

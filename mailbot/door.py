"""The one door in: every transport hands raw bytes here, and gets its answer only after a durable commit.

Commits are grouped: whatever arrived while the previous commit was being made, or while this one waited for
its turn to write, goes into it, so a busy listener pays one fsync for many messages and an idle one waits
for nothing (no fixed delay).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from mailbot.clock import Clock
from mailbot.errors import TransientStoreError
from mailbot.store import Database
from mailbot.store import inbound as inbound_store
from mailbot.store.inbound import RawMessage

if TYPE_CHECKING:
    from mailbot.metrics import Metrics

log = logging.getLogger("mailbot.door")
DOORS = ("smtp", "lmtp", "imap", "ingest")


def door_of(source: str) -> str:
    """The door a stored message came through, from its `source` ("imap:<mailbox>", "cli", "smtp"...)."""
    if source.startswith("imap"):
        return "imap"
    return "ingest" if source == "cli" else source


class Door:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        max_batch: int = 256,
        on_stored: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self.max_batch = max_batch
        self.on_stored = on_stored
        # Handed in, not yet taken into a commit. The loop appends, the database thread takes (a deque's
        # append and popleft are atomic).
        self._waiting: deque[tuple[RawMessage, asyncio.Future[int]]] = deque()
        self._writer: asyncio.Task[None] | None = None

    async def accept(
        self,
        raw: bytes,
        *,
        source: str,
        envelope_from: str | None = None,
        envelope_to: Sequence[str] = (),
        peer: str | None = None,
    ) -> int:
        """Store one message durably; returns its inbound id. Raises TransientStoreError when it could not."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((RawMessage(raw, source, envelope_from, tuple(envelope_to), peer), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="mailbot-door")
        return await future

    async def _write_loop(self) -> None:
        while self._waiting:
            await self._commit()

    async def _commit(self) -> int:
        """One transaction for whatever waits once it has its turn to write: what was handed in while the
        previous commit ran, and what came while this one waited for the turn (on SQLite, behind a worker's
        transaction), so a 250 waits for one commit after its message, not two. How many it stored."""
        batch: list[tuple[RawMessage, asyncio.Future[int]]] = []

        def insert(connection: Connection) -> list[int]:
            while self._waiting and len(batch) < self.max_batch:
                batch.append(self._waiting.popleft())
            return inbound_store.insert_many(connection, [message for message, _ in batch], self.clock.now())

        try:
            ids = await self.db.run_statements(insert)
        except Exception as exc:  # noqa: BLE001 - whatever failed, every waiter must learn it was not stored (451)
            if not batch:  # it failed before its turn (the database busy past its timeout): those waiting then
                batch.extend(self._waiting)
                self._waiting.clear()
            log.error("could not store %d message(s): %s", len(batch), exc)
            error = exc if isinstance(exc, TransientStoreError) else TransientStoreError(str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return 0
        for (_, future), inbound_id in zip(batch, ids, strict=True):
            if not future.done():
                future.set_result(inbound_id)
        if self.metrics:
            self.metrics.stored(message.source for message, _ in batch)
        if self.on_stored:
            self.on_stored()
        return len(batch)

    async def close(self) -> None:
        """Commit everything already handed in, then stop."""
        if self._writer is not None:
            await self._writer

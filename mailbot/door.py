"""The one door in: every transport hands raw bytes here, and gets its answer only after a durable commit.

Commits are grouped: whatever arrived while the previous commit was being made goes into the next one, so a
busy listener pays one fsync for many messages and an idle one waits for nothing (no fixed delay).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

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
        self._queue: asyncio.Queue[tuple[RawMessage, asyncio.Future[int]] | None] = asyncio.Queue()
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
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="mailbot-door")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put((RawMessage(raw, source, envelope_from, tuple(envelope_to), peer), future))
        return await future

    async def _write_loop(self) -> None:
        closing = False
        while not closing:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    closing = True
                    break
                batch.append(item)
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[RawMessage, asyncio.Future[int]]]) -> None:
        messages = [message for message, _ in batch]
        try:
            ids = await self.db.run_statements(inbound_store.insert_many, messages, self.clock.now())
        except Exception as exc:  # noqa: BLE001 - whatever failed, every waiter must learn it was not stored (451)
            log.error("could not store %d message(s): %s", len(batch), exc)
            error = exc if isinstance(exc, TransientStoreError) else TransientStoreError(str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), inbound_id in zip(batch, ids, strict=True):
            if not future.done():
                future.set_result(inbound_id)
        if self.metrics:
            self.metrics.stored(message.source for message in messages)
        if self.on_stored:
            self.on_stored()

    async def close(self) -> None:
        """Commit everything already handed in, then stop."""
        if self._writer is not None and not self._writer.done():
            await self._queue.put(None)
            await self._writer

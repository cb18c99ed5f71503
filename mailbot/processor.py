"""The runner that turns stored raw messages into tickets, off the accepting path.

A batch goes in three steps: its pending rows are claimed under a lease (by the transaction that decided
the batch before it, or by a short one of its own when the runner wakes to new mail); they are read
(parsed, their senders authenticated) outside any transaction, so neither that work nor a DNS wait holds
SQLite's write lock, and several runners share the work; then the intake decides the whole
batch inside one savepoint of one transaction. The daemon reads each claimed row on a pool of reader
threads and decides whichever rows are read: a message whose reading is slow (a slow name server, within
its DNS budget) is decided in a later batch, so the mail behind it never waits for it (issue 12). When any message of it fails, that savepoint is undone and
the batch runs again with each message in a savepoint of its own (and facts of its own), so failures are recorded on their rows
(status failed, with the reason), one bad message never blocks the others and nothing is lost:
`mailbot inbound retry` puts failed rows back. A savepoint per message cost a quarter of the intake's time
(bench/RESULTS.md), and nearly every batch has no failure at all. A database outage leaves rows pending
for the next pass (their claim is given back); any other temporary failure (DNS) leaves that one row
pending for another try, later each time (`retry_after`).

Claims are short leases that the instance renews while it lives (mailbot.leases): a batch is decided only
on the rows its instance still holds, so one whose lease ran out meanwhile (a stall) is never processed
twice. `stop` ends the runner cleanly: the batch in hand is finished, then what is pending, for a bounded
time; nothing stays claimed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mailbot.clock import Clock
from mailbot.errors import TransientError, TransientStoreError
from mailbot.intake import Intake, Outcome
from mailbot.leases import LEASE
from mailbot.reading import Reading
from mailbot.store import Database, by_index
from mailbot.store import inbound as inbound_store
from mailbot.store.schema import InboundMessage
from mailbot.trail import ended

if TYPE_CHECKING:
    from mailbot.metrics import Tally

log = logging.getLogger("mailbot.intake")
DEFERRED_RETRY = timedelta(minutes=5)  # a message that could not be decided now (DNS) is tried again then
# Rows per transaction: a batch shares its transaction's cost (the claim, the facts' reads, an INSERT per
# table, the commit) among its rows. On the whole `mailbot run` (bench/RESULTS.md sections 15 and 16), 100
# rather than 50 took 2,000 questions to tickets at 803 to 814 msgs/s instead of 745 to 763; 200 rather than
# 100, 745 to 793 instead of 671 to 725 on PostgreSQL, 783 to 788 instead of 735 to 749 on SQLite...
BATCH = 200
# ... and no more raw mail than this beyond its first message, so memory stays bounded however large the
# messages in the backlog are (the doors take up to 25 MB each).
BATCH_BYTES = 16 * 2**20
# On SQLite, rows per transaction while the doors store mail (one did within STORING seconds): a door's commit
# waits for its turn behind at most one intake transaction (mailbot.store.writers). Measured on 2 cores, 10
# SMTP sessions (section 15): 2 rows, the doors accept at 56 to 60% of a null handler's rate; 8, at 34 to 35%;
# the backlog drains as fast (a batch's transaction claims the next, so a short batch costs one transaction).
BATCH_WHILE_STORING = 2
# Under load a door stores mail every few milliseconds.
STORING = 0.02  # seconds
# Reader threads: DNS waits overlap, and one slow message holds one thread, not the intake.
READERS = 4
# How long a batch waits for its slowest reading before deciding the rows already read; a normal reading
# takes milliseconds. The rest are decided as soon as they are read, in a later batch.
PATIENCE = 0.5  # seconds
RETRY_CAP = timedelta(hours=4)
Read = Reading | None  # None: reading raised (a bug); the row is then run isolated, which records it


def retry_after(attempts: int) -> timedelta:
    """When a message deferred by a temporary failure (DNS) is tried again: DEFERRED_RETRY after the first,
    twice as long after each next one, at most RETRY_CAP (a day of failures is about ten tries, not 288)."""
    return min(DEFERRED_RETRY * 2 ** max(attempts - 1, 0), RETRY_CAP)


class Processor:
    def __init__(
        self,
        db: Database,
        intake: Intake,
        clock: Clock,
        *,
        owner: str,
        batch: int = BATCH,
        on_outcome: Callable[[Outcome], None] | None = None,
        metrics: Tally | None = None,
    ) -> None:
        self.db = db
        self.intake = intake
        self.clock = clock
        self.owner = owner  # the name this instance's claims carry (mailbot.leases)
        self.batch = batch
        self.batch_while_storing = BATCH_WHILE_STORING if db.is_sqlite else None  # PostgreSQL locks rows alone
        self._stored_at = -STORING  # monotonic instant a door last stored mail
        self._claimed_ahead = False  # the last batch's transaction claimed the rows now being read
        self.on_outcome = on_outcome
        self.metrics = metrics  # set by the daemon when it serves /metrics
        self._wake = asyncio.Event()
        self._readers: ThreadPoolExecutor | None = None
        self._reading: dict[asyncio.Future[Read], InboundMessage] = {}  # claimed rows being read
        self._stop_at: float | None = None  # monotonic instant the stopping runner stops taking more batches

    def process_row(self, session: Session, row: InboundMessage, reading: Read = None) -> Outcome:
        """Run the intake on one claimed row, isolating unexpected errors to that row."""
        now = self.clock.now()
        try:  # the intake keeps its writes in a savepoint of their own, undone when it raises
            outcome = self.intake.process(session, row, now, reading=reading)
        except TransientStoreError:
            raise
        except OperationalError as exc:
            # The database, not the message: a deadlock, a lock timeout, a lost connection. The whole batch
            # rolls back and stays pending for the next pass; marking the message failed would strand it.
            raise TransientStoreError(f"database unavailable: {type(exc.orig or exc).__name__}") from exc
        except TransientError as exc:
            # Nothing could be decided now (a DNS failure authenticating the sender): the savepoint undid
            # the intake's work, and the row stays pending, unclaimed but not to be tried before then.
            row.claimed_by, row.claimed_until = None, now + retry_after(row.attempts)
            outcome = Outcome("deferred", detail=f"{exc}; tried again after {row.claimed_until:%H:%M:%S} UTC")
            row.trail = ended(row.trail, "deferred", outcome.detail or "")
        except Exception as exc:  # a bug or hostile input: keep the message, record why, go on
            log.exception("inbound message %s failed", row.id)
            row.status, row.action, row.claimed_until = "failed", "failed", None
            row.error = f"{type(exc).__name__}: {exc}"[:2000]
            outcome = Outcome("failed", detail=row.error)
            row.trail = ended(row.trail, "failed", row.error)
        _log(row, outcome)
        return outcome

    def _claim(self, session: Session, limit: int | None = None) -> list[InboundMessage]:
        return inbound_store.claim_pending(
            session, self.clock.now(), LEASE, limit or self.batch, self.owner, budget=BATCH_BYTES
        )

    def _read_one(self, row: InboundMessage) -> Read:
        """What the intake reads of a row; None where reading failed (the isolated run says why)."""
        try:
            return self.intake.read(row)
        except Exception:  # noqa: BLE001 - recorded on the row when it runs isolated, with its traceback
            return None

    def _read(self, rows: list[InboundMessage]) -> list[Read]:
        return [self._read_one(row) for row in rows]

    def _decide(self, session: Session, rows: list[InboundMessage], readings: list[Read]) -> list[Outcome]:
        by_index(session)  # the batch's look-ups, however stale the planner's statistics
        if None not in readings:  # else a message could not even be read: each runs isolated at once
            now = self.clock.now()
            try:
                # Written at the batch's end (mailbot.store.batch): the rules see this batch's own writes
                # through its facts (mailbot.facts), loaded once for the batch and kept up to date; the unique
                # index on message identities is the last guard. The outcomes are written only on rows this
                # instance still holds: one taken over meanwhile (a stall) undoes the batch (TakenOver).
                with session.begin_nested(), session.no_autoflush:
                    outcomes = self.intake.decide(
                        session, rows, [r for r in readings if r is not None], now, owner=self.owner
                    )
            except Exception:  # noqa: BLE001, S110 - one message failed (or the database did): isolate each
                pass
            else:
                for row, outcome in zip(rows, outcomes, strict=True):
                    _log(row, outcome)
                return outcomes
        held = inbound_store.still_held(session, [row.id for row in rows], self.owner)
        if len(held) < len(rows):
            log.warning("%d claimed inbound message(s) were taken over by another instance", len(rows) - len(held))
            kept = [(row, read) for row, read in zip(rows, readings, strict=True) if row.id in held]
            rows, readings = [row for row, _ in kept], [read for _, read in kept]
        # Alone, each row is the session's (claimed in a transaction of its own, held by this instance, locked
        # now): its outcome is written with the session's flush.
        rows = inbound_store.many(session, [row.id for row in rows])
        return [self.process_row(session, row, read) for row, read in zip(rows, readings, strict=True)]

    def _give_back(self, rows: list[InboundMessage]) -> None:
        """After a database failure: the claimed rows are pending again at once, not when their lease ends."""
        try:
            self.db.call(inbound_store.release, [row.id for row in rows], self.owner)
        except TransientStoreError as exc:
            log.warning("claimed inbound messages wait for their lease to run out: %s", exc)

    def run_once(self) -> list[Outcome]:
        """Process one batch of pending messages (synchronously, for the CLI, tests and benchmarks)."""
        rows = self.db.call(self._claim)
        if not rows:
            return []
        readings = self._read(rows)
        try:
            return self._committed(self.db.call(self._decide, rows, readings))
        except TransientStoreError:
            self._give_back(rows)
            raise

    def process_one(self, inbound_id: int) -> Outcome:
        """Process one stored message now (`mailbot ingest`, `inbound retry`). Read first, outside any
        transaction, as the runner does: parsing and DNS never hold the write lock."""
        stored = self.db.call(inbound_store.get, inbound_id)
        reading = self._read_one(stored) if stored is not None and stored.status == "pending" else None

        def work(session: Session) -> tuple[Outcome, bool]:
            row = inbound_store.get(session, inbound_id, lock=True)  # the sweep may be on it too
            if row is None:
                raise LookupError(f"no inbound message {inbound_id}")
            if row.status != "pending":
                return Outcome(row.action or row.status, row.ticket_id, row.error), False
            return self.process_row(session, row, reading), True

        outcome, decided_now = self.db.call(work)
        return self._committed([outcome])[0] if decided_now else outcome

    async def _run_batch(self) -> list[Outcome]:
        """`run_once`, with each row read on a reader thread: the database's threads (SQLite's one, which
        also stores what the doors accept) never wait on parsing or DNS, and the rows read within PATIENCE
        are decided without waiting for a slow one (see the module docstring). The transaction that decides
        a batch also claims the next one, which is read as soon as it commits: a transaction a batch, not two
        (on SQLite each waits for its turn behind the doors)."""
        if not self._claimed_ahead and (room := self._room()) > 0:
            self._read_claimed(await self.db.run(self._claim, room))
        self._claimed_ahead = False
        if not self._reading:
            return []
        done, _ = await asyncio.wait(self._reading, timeout=PATIENCE)
        read = sorted(((self._reading.pop(future), future.result()) for future in done), key=lambda r: r[0].id)
        if not read:
            return []  # a reading that ends wakes the loop
        rows, readings = [row for row, _ in read], [reading for _, reading in read]
        try:
            outcomes, claimed = await self.db.run(self._decide_and_claim, rows, readings, self._room())
        except TransientStoreError:
            await asyncio.to_thread(self._give_back, rows)
            raise
        self._read_claimed(claimed)
        self._claimed_ahead = bool(claimed)
        return self._committed(outcomes)

    def _decide_and_claim(
        self, session: Session, rows: list[InboundMessage], readings: list[Read], room: int
    ) -> tuple[list[Outcome], list[InboundMessage]]:
        outcomes = self._decide(session, rows, readings)
        return outcomes, self._claim(session, room) if room > 0 else []

    def _committed(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Count the outcomes of a transaction that committed (a failed one's messages are processed again)."""
        if self.metrics:
            self.metrics.decided(outcome.action for outcome in outcomes)
        return outcomes

    def _room(self) -> int:
        """How many more rows the next batch claims beside the readings in flight: `batch_while_storing` while
        the doors store mail (a 250 may be waiting for the turn to write, mailbot.store.writers), else `batch`."""
        limit = self.batch
        if self.batch_while_storing is not None and time.monotonic() - self._stored_at < STORING:
            limit = self.batch_while_storing
        return limit - len(self._reading)

    def _read_claimed(self, rows: list[InboundMessage]) -> None:
        """Each claimed row read on a reader thread; each reading that ends wakes the runner."""
        if not rows:
            return
        if self._readers is None:
            self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="mailbot-read")
        loop = asyncio.get_running_loop()
        for row in rows:
            future = loop.run_in_executor(self._readers, self._read_one, row)
            future.add_done_callback(lambda _: self._wake.set())
            self._reading[future] = row

    def wake(self) -> None:
        """A door stored mail."""
        self._stored_at = time.monotonic()
        self._wake.set()

    def close(self) -> None:
        """Stop the reader threads once their readings end; rows still being read stay claimed until their
        lease runs out, then any instance takes them again."""
        if self._readers is not None:
            self._readers.shutdown(wait=False, cancel_futures=True)
            self._readers = None
        self._reading.clear()

    def stop(self, within: float) -> None:
        """Make `run` return once nothing is pending, or after its batch in hand once `within` seconds passed."""
        self._stop_at = time.monotonic() + within
        self._wake.set()

    async def run(self, sweep: float = 5.0) -> None:
        """Process whatever is pending whenever woken (a door stored something), and every `sweep` seconds;
        until stopped: then what is pending is processed too, in order, and no batch is cut short (its rows
        would wait out their lease, and later mail would become tickets first)."""
        while True:
            # Cleared before the batch, not after: a message stored while the batch runs wakes the next one.
            self._wake.clear()
            try:
                outcomes = await self._run_batch()
            except TransientError as exc:
                log.error("cannot process inbound mail now: %s; retrying", exc)
                outcomes = []
            for outcome in outcomes:
                if self.on_outcome:
                    self.on_outcome(outcome)
            if self._stop_at is not None:  # the doors are closed: a pass that finds nothing has drained it all
                if (not outcomes and not self._reading) or time.monotonic() >= self._stop_at:
                    return  # what is left is pending, and what is still claimed the daemon gives back
                continue
            if self._claimed_ahead:
                continue  # the next batch, claimed with this one
            await self._sleep(sweep)

    async def _sleep(self, seconds: float) -> None:
        """Until woken, or `seconds` at most. Not asyncio.wait_for: on Python 3.11 it swallows a cancellation
        that arrives as the event is set, and the daemon's stop then waited forever for this task."""
        waking = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waking}, timeout=seconds)
        finally:
            waking.cancel()


# How loud each outcome is: a failure needs a person; a deferral resolves itself, unless it keeps happening.
_LEVELS = {"failed": logging.ERROR, "deferred": logging.WARNING}


def _log(row: InboundMessage, outcome: Outcome) -> None:
    """One line per decision, with its reason: the decision step of the trail (mailbot.trail)."""
    steps = row.trail or []
    why = steps[-1]["detail"] if steps else (outcome.detail or "")
    log.log(
        _LEVELS.get(outcome.action, logging.INFO),
        "inbound %s from %s: %s: %s", row.id, row.envelope_from or "-", outcome.action, why,
    )

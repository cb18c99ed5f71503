"""Whose turn it is to write a SQLite file: the doors first, then the workers behind them, across processes.

SQLite has one writer at a time, and a writer that finds the file locked sleeps in its busy handler with a
growing back-off (1, 2, 5, 10 ... 100 ms) without learning when the lock is free. With the doors and the
workers in separate processes (mailbot.supervisor), a door commit that meets the intake's transaction would
sleep far longer than that transaction lasts, and the intake, writing batch after batch, takes the lock
again between two of its sleeps: the 250 waits behind the backlog. So every transaction first takes its
turn here, with two flock(2) locks on files beside the database:

- `<db>.writer`, held exclusively for the whole transaction, its commit included: writers queue on it, not
  in SQLite's busy handler (whose lock is then always free at BEGIN IMMEDIATE);
- `<db>.turn`: a process that answers senders (the doors, the CLI) holds it shared while it waits and
  writes; one that gives way (a worker) takes it exclusively, for an instant, before it queues. A worker
  therefore does not start a transaction while a door waits, for GIVE_WAY at most: then it queues anyway,
  so a steady stream of mail, which keeps some door waiting nearly all the time, never starves the backlog
  behind it. A 250 waits for one worker transaction at most, which the intake keeps short (the worker's
  batch, mailbot.workers.INTAKE_BATCH), and the doors and the intake take turns.

The kernel frees a dead holder's locks. A waiter for the writer's lock polls every POLL seconds (flock has
no timeout) and gives up after the database's lock timeout, as SQLite would; a worker giving way polls the
same way, for GIVE_WAY at most. Threads of one process take turns on a lock of their own first: flock
belongs to an open file, which all of them share. A thread that opens a transaction inside its own has its
turn already.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mailbot.errors import TransientStoreError

log = logging.getLogger("mailbot.store")
POLL = 0.0005  # seconds between two tries of a lock another process holds
# How long a worker lets the doors go first before it queues for the lock with them. A door commit lasts a
# millisecond or two; an intake transaction of INTAKE_BATCH rows about 15 ms. Strict priority (waiting until
# no door waits) let the intake write only when the listener paused: under steady mail it drained at less
# than half its speed (bench/RESULTS.md section 10).
GIVE_WAY = 0.005


class Turns:
    def __init__(
        self, database: Path, timeout: float, *, gives_way: bool = False, give_way_for: float = GIVE_WAY
    ) -> None:
        self.paths = database.with_name(database.name + ".turn"), database.with_name(database.name + ".writer")
        self.timeout = timeout
        self.gives_way = gives_way
        self.give_way_for = give_way_for
        self._local = threading.RLock()
        self._depth = 0  # this process's transactions in progress (in one thread: the lock's holder)
        self._files: tuple[int, int] | None = None
        self._unusable = False

    def _open(self) -> tuple[int, int] | None:
        """The lock files, made on first use (the owner's alone, like the database: mailbot.store). None
        where they cannot be (a read-only copy, another user's folder): SQLite alone orders the writers then."""
        if self._files is None and not self._unusable:
            try:
                turn = os.open(self.paths[0], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                log.warning("writing without turns: cannot open %s: %s", self.paths[0], exc.strerror)
                self._unusable = True
                return None
            self._files = turn, os.open(self.paths[1], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._files

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """This process's turn to write, held until the block ends."""
        deadline = time.monotonic() + self.timeout
        if not self._local.acquire(timeout=self.timeout):
            raise TransientStoreError(f"database busy: no turn to write within {self.timeout:g} s")
        self._depth += 1
        try:
            if self._depth > 1 or (files := self._open()) is None:
                yield  # a transaction inside this thread's own (SQLite decides, as without turns), or no files
                return
            turn, writer = files
            if self.gives_way:
                # The doors first while they wait or write, for give_way_for at most; then queue for the
                # writer's lock like anyone.
                if _take(turn, fcntl.LOCK_EX, time.monotonic() + self.give_way_for, patient=False):
                    fcntl.flock(turn, fcntl.LOCK_UN)
            else:
                _take(turn, fcntl.LOCK_SH, deadline)
            try:
                _take(writer, fcntl.LOCK_EX, deadline)
                try:
                    yield
                finally:
                    fcntl.flock(writer, fcntl.LOCK_UN)
            finally:
                if not self.gives_way:
                    fcntl.flock(turn, fcntl.LOCK_UN)
        finally:
            self._depth -= 1
            self._local.release()

    def close(self) -> None:
        if self._files is not None:
            for fd in self._files:
                os.close(fd)
            self._files = None


def _take(fd: int, mode: int, deadline: float, *, patient: bool = True) -> bool:
    """The lock by `deadline`: True; else raises TransientStoreError, or when not `patient` returns False."""
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                if not patient:
                    return False
                raise TransientStoreError("database busy: another process kept writing past the lock timeout") from None
            time.sleep(POLL)

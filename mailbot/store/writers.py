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
  behind it. A 250 waits for one worker transaction at most, which the intake keeps short while the doors
  store mail (mailbot.processor.BATCH_WHILE_STORING), and the doors and the intake take turns.

The kernel frees a dead holder's locks. A waiter sleeps in the kernel until the lock is free, on a thread
of the lock's own (`_Lock`: flock(2) has no timeout), and gives up after the database's lock timeout, as
SQLite would; a worker giving way waits the same way, for GIVE_WAY at most. (Polling every half millisecond
cost 17 µs of CPU a try, about 60 tries for a sender behind one intake batch: 0.1 ms a message, issue 13.)
Threads of one process take turns on a lock of their own first: flock belongs to an open file, which all of
them share. A thread that opens a transaction inside its own has its turn already.
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
# How long a worker lets the doors go first before it queues for the lock with them. A door commit lasts a
# millisecond or two; an intake transaction of BATCH_WHILE_STORING rows about as long. Strict priority (waiting until
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
        self._files: tuple[_Lock, _Lock] | None = None
        self._unusable = False

    def _open(self) -> tuple[_Lock, _Lock] | None:
        """The lock files, made on first use (the owner's alone, like the database: mailbot.store). None
        where they cannot be (a read-only copy, another user's folder): SQLite alone orders the writers then."""
        if self._files is None and not self._unusable:
            try:
                turn = os.open(self.paths[0], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                log.warning("writing without turns: cannot open %s: %s", self.paths[0], exc.strerror)
                self._unusable = True
                return None
            writer = os.open(self.paths[1], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._files = _Lock(turn, fcntl.LOCK_EX if self.gives_way else fcntl.LOCK_SH), _Lock(writer, fcntl.LOCK_EX)
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
                if turn.take(time.monotonic() + self.give_way_for):
                    turn.release()
            elif not turn.take(deadline):
                raise _busy()
            try:
                if not writer.take(deadline):
                    raise _busy()
                try:
                    yield
                finally:
                    writer.release()
            finally:
                if not self.gives_way:
                    turn.release()
        finally:
            self._depth -= 1
            self._local.release()

    def close(self) -> None:
        if self._files is not None:
            for lock in self._files:
                lock.close()
            self._files = None


def _busy() -> TransientStoreError:
    return TransientStoreError("database busy: another process kept writing past the lock timeout")


class _Lock:
    """One lock file of this process in one mode. Free: taken at once. Held by another process: a thread of
    this lock's own waits for it in flock(2), and hands it over, or lets it go at once if its waiter gave up
    meanwhile (the deadline passed). One waiter at a time: Turns' own lock orders this process's threads."""

    def __init__(self, fd: int, mode: int) -> None:
        self.fd, self.mode = fd, mode
        self._state = threading.Condition()
        self._asked = False  # the thread is to wait for the lock, or waits in flock now
        self._wanted = False  # a waiter is still there for it
        self._handed = False  # the thread took it for the waiter
        self._closed = False
        self._thread: threading.Thread | None = None

    def take(self, deadline: float) -> bool:
        """The lock by `deadline` (time.monotonic): True; False if it stayed held by another process."""
        with self._state:
            if not self._asked:  # else a wait a waiter gave up on goes on: this one waits for its end
                try:
                    fcntl.flock(self.fd, self.mode | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    self._ask()
            self._wanted = True
            handed = self._state.wait_for(lambda: self._handed, max(deadline - time.monotonic(), 0.0))
            self._wanted = self._handed = False
            return handed

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """The file closed now, or by the thread once its wait ends (closing it under a waiting flock could
        let the thread unlock whatever file reuses the number)."""
        with self._state:
            self._closed = True
            self._state.notify_all()
            if not self._asked:
                os.close(self.fd)

    def _ask(self) -> None:
        self._asked = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._wait, name="mailbot-turn", daemon=True)
            self._thread.start()
        self._state.notify_all()

    def _wait(self) -> None:
        while True:
            with self._state:
                self._state.wait_for(lambda: self._asked or self._closed)
                if not self._asked:
                    return
            fcntl.flock(self.fd, self.mode)  # sleeps in the kernel until the other process lets go
            with self._state:
                self._asked = False
                if self._closed:
                    os.close(self.fd)
                    return
                if self._wanted:
                    self._handed = True
                    self._state.notify_all()
                else:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)

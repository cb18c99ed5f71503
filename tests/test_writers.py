"""Whose turn it is to write a SQLite file (mailbot.store.writers): a door that waits goes before a worker
that comes back for more, doors that keep waiting do not starve a worker, a waiter gives up after the lock
timeout, and a dead holder frees the lock."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mailbot.errors import TransientStoreError
from mailbot.store import Database
from mailbot.store.writers import Turns
from tests.test_supervisor import wait_for


def waiting_door(turns: Turns) -> bool:
    """A door holds the turn (shared) while it waits: nobody can take it exclusively."""
    probe = os.open(turns.paths[0], os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(probe)
    return False


def _free(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def in_thread(turns: Turns, order: list[str], name: str) -> threading.Thread:
    def write() -> None:
        with turns.writing():
            order.append(name)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


class TestTurns:
    """Each Turns stands for a process (its own open files): flock tells them apart as it would processes."""

    @pytest.fixture
    def make(self, tmp_path: Path) -> Callable[..., Turns]:
        # A worker gives way for 30 s here unless told otherwise: the order then depends on no thread's timing.
        return lambda gives_way=False, timeout=30.0, give_way_for=30.0: Turns(
            tmp_path / "mailbot.db", timeout, gives_way=gives_way, give_way_for=give_way_for
        )

    def test_a_waiting_door_goes_before_the_worker_that_held_the_lock(self, make: Callable[..., Turns]) -> None:
        worker, door = make(gives_way=True), make()
        order: list[str] = []
        with worker.writing():
            waiting = in_thread(door, order, "door")
            wait_for(lambda: waiting_door(door), "the door to wait")
            again = in_thread(make(gives_way=True), order, "worker")  # the intake's next batch, at once
        waiting.join()
        again.join()
        assert order == ["door", "worker"]

    def test_doors_that_keep_waiting_do_not_starve_a_worker(self, make: Callable[..., Turns]) -> None:
        """Under steady mail some door waits nearly all the time: the worker gives way for a bounded time,
        then writes (with strict priority it waited until the mail stopped, here: forever)."""
        door, order = make(), []
        steady = os.open(door.paths[0], os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(steady, fcntl.LOCK_SH)  # a door waiting, and another, and another...
            worker = in_thread(make(gives_way=True, give_way_for=0.05), order, "worker")
            worker.join(timeout=20)
            assert order == ["worker"]
        finally:
            os.close(steady)
            worker.join()

    def test_a_waiter_gives_up_after_the_lock_timeout(self, make: Callable[..., Turns]) -> None:
        with make().writing(), pytest.raises(TransientStoreError, match="database busy"), make(timeout=0.05).writing():
            pass

    def test_a_lock_taken_after_its_waiter_gave_up_is_let_go(self, make: Callable[..., Turns]) -> None:
        holder, late = make(), make(timeout=0.05)
        with holder.writing(), pytest.raises(TransientStoreError), late.writing():
            pass
        # The late one's thread still waited in flock when the holder let go: it must not keep the lock.
        probe = os.open(late.paths[1], os.O_RDWR)
        try:
            wait_for(lambda: _free(probe), "the abandoned lock let go")
        finally:
            os.close(probe)

    def test_a_waiter_after_one_that_gave_up_gets_the_lock(self, make: Callable[..., Turns]) -> None:
        holder, door = make(), make(timeout=0.05)
        order: list[str] = []
        with holder.writing():
            with pytest.raises(TransientStoreError), door.writing():
                pass
            door.timeout = 30.0
            second = in_thread(door, order, "door")  # the first wait's flock is still in the kernel
            order.append("holder")
        second.join(timeout=20)
        assert order == ["holder", "door"]

    def test_threads_of_one_process_take_turns(self, make: Callable[..., Turns]) -> None:
        turns, order = make(), []
        with turns.writing():
            other = in_thread(turns, order, "second")
            order.append("first")
        other.join()
        assert order == ["first", "second"]

    def test_a_dead_holder_frees_the_lock(self, make: Callable[..., Turns]) -> None:
        turns = make(timeout=30.0)
        hold = (
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)"
        )
        holder = subprocess.Popen([sys.executable, "-c", hold, str(turns.paths[1])], stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        holder.kill()
        holder.wait()
        with turns.writing():
            pass


def test_the_database_takes_its_turn_on_sqlite_files_only(tmp_path: Path, postgres_database: str) -> None:
    sqlite = Database(f"sqlite:///{tmp_path / 'mailbot.db'}")
    postgres = Database(postgres_database)
    try:
        assert sqlite.turns is not None and postgres.turns is None
        assert Database("sqlite://").turns is None  # in memory: one process only
    finally:
        sqlite.close()
        postgres.close()

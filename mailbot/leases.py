"""Who holds a claim, for how long, and what becomes of it when its holder stops or dies.

An instance claims inbound messages (the intake) and outbox items (the sender) under a short lease, and
renews every claim it holds every few seconds while it lives. So what a dead instance held is free again
within one lease, on any host; a clean stop gives back what it still holds before it exits; and a restarted
instance takes back at once what its dead predecessor on the same host held: a claim names its holder by
host, process id and that process's start time, so a claim of this host whose process is gone (or whose
process id now belongs to a newer process) is known dead without waiting. Instances on different hosts
never judge each other's processes: their claims run out with their lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from mailbot.clock import Clock
from mailbot.errors import TransientError
from mailbot.store import Database
from mailbot.store import leases as lease_store

log = logging.getLogger("mailbot.leases")
# Long enough for three missed renewals in a row (a database busy for 15 s) before another instance takes
# over; short enough that a crash costs seconds of delay, not minutes.
LEASE = timedelta(seconds=20)
RENEW_EVERY = LEASE / 4
UNKNOWN = "-"  # a start time that cannot be read: such a holder is never judged dead, its lease runs out


@dataclass(frozen=True)
class Owner:
    """An instance as its claims name it: `host/pid/start` (`start`: the process's start, in clock ticks
    since boot, so that a process id used again by a newer process is not mistaken for the old one)."""

    host: str
    pid: int
    start: str

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.start}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        host, _, rest = text.rpartition("/")
        host, _, pid = host.rpartition("/")
        return cls(host, int(pid), rest) if host and pid.isdigit() else None

    def succeeded_by(self, me: Owner, started: str | None) -> bool:
        """Whether `me` (this process) may take this holder's claims now: it ran on this host, and the
        process it names is gone (`started` None) or is another, newer one (a different start time)."""
        if self.host != me.host or self == me or UNKNOWN in (self.start, me.start):
            return False
        return started is None or started != self.start


def started(pid: int) -> str | None:
    """When process `pid` started (field 22 of /proc/PID/stat), None when no such process runs, UNKNOWN
    when the system does not say (no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else UNKNOWN
    except OSError:
        return UNKNOWN
    return stat.rpartition(")")[2].split()[19]  # after the command name, which may hold spaces and ")"


def this_process() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, started(pid) or UNKNOWN)


class Leases:
    """This instance's claims: renewed while it runs, taken back from its dead predecessor at start, given
    back when it stops."""

    def __init__(self, db: Database, clock: Clock, owner: Owner | None = None, lease: timedelta = LEASE) -> None:
        self.db = db
        self.clock = clock
        self.owner = owner or this_process()
        self.name = str(self.owner)
        self.lease = lease
        self._renewed: float | None = None  # monotonic time of the last renewal, once `run` renews

    async def take_back(self) -> int:
        """Free at once what dead processes of this host held (this instance before its restart)."""
        try:
            holders = await self.db.run(lease_store.holders)
            dead = [name for name in holders if self._dead(name)]
            freed = await self.db.run(lease_store.release, dead) if dead else 0
        except TransientError as exc:
            log.warning("cannot take back the claims of a previous run now (their leases run out): %s", exc)
            return 0
        if freed:
            log.info("took back %d claimed row(s) of %s", freed, ", ".join(sorted(dead)))
        return freed

    def _dead(self, name: str) -> bool:
        holder = Owner.parse(name)
        if holder is None or holder.host != self.owner.host:  # another host's process ids mean nothing here
            return False
        return holder.succeeded_by(self.owner, started(holder.pid))

    async def renew(self) -> None:
        await self.db.run(lease_store.renew, self.name, self.clock.now() + self.lease)

    def current(self) -> bool:
        """Whether what this instance claimed is surely still its own: its renewals are on time. After a
        stall (or a database it could not reach) longer than that, another instance may have taken over
        its claims: it must not act on them (the sender sends nothing more of what it had claimed)."""
        margin = (self.lease - RENEW_EVERY).total_seconds()
        return self._renewed is None or time.monotonic() - self._renewed < margin

    async def run(self) -> None:
        """Renew every claim of this instance every RENEW_EVERY, for as long as it runs."""
        self._renewed = time.monotonic()
        while True:
            await asyncio.sleep(RENEW_EVERY.total_seconds())
            try:
                await self.renew()
            except TransientError as exc:
                log.warning("cannot renew this instance's claims: %s", exc)
            else:
                self._renewed = time.monotonic()

    async def give_back(self) -> None:
        """Free whatever this instance still holds (it is stopping)."""
        try:
            freed = await self.db.run(lease_store.release, [self.name])
        except TransientError as exc:
            log.warning("claims left to run out their lease: %s", exc)
            return
        if freed:
            log.info("gave back %d claimed row(s)", freed)

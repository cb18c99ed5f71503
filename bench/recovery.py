"""How long the whole `mailbot run` takes to recover from `kill -9` under load.

For each database (SQLite in a temporary folder; PostgreSQL in a private database created for the run and
dropped after):
  1. `mailbot db upgrade`, and --senders named contacts registered (bench/corpus.py), so every message is
     entitled and owes a confirmation;
  2. --instances real `mailbot run` processes on that database (outgoing mail to a maildir each);
  3. this process sends messages of --size bytes over --sessions SMTP sessions, spread over the instances,
     as an MTA would: a message not answered 250 (its instance died) is sent again to the next live one;
  4. every --interval seconds one instance (in turn) is killed with SIGKILL and started again at once;
     the load stops at the last kill;
  5. from the last restart, the clock runs until every message answered 250 is a ticket whose confirmation
     was sent ("recovered": this includes working off the backlog the load left, so it also measures the
     daemon's throughput), and until every row the killed process held claimed when it died is done
     ("claims": the inbound messages processed, the outbox items sent; this is what leases decide);
     it then counts tickets opened twice for one Message-ID and confirmations written twice.

    .venv/bin/python bench/recovery.py [--databases sqlite postgresql] [--instances 1] [--kills 5]
                                       [--interval 4] [--sessions 10] [--size 2000] [--senders 100]
                                       [--give-up 600]
"""

from __future__ import annotations

import argparse
import os
import smtplib
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_binary_file
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import SUPPORT, customer_message, sender
from instance import Instance
from processing import database

from mailbot.store.schema import InboundMessage, OutboxItem, Ticket


@dataclass
class Load:
    """SMTP sessions that keep sending until stopped; what was answered 250, by Message-ID."""

    instances: list[Instance]
    size: int
    senders: int
    accepted: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _next: Iterator[int] = field(default_factory=lambda: iter(range(10**9)))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def session(self, k: int) -> None:
        pending: int | None = None
        while not self.stop.is_set():
            instance = self.instances[(k + (pending or 0)) % len(self.instances)]
            try:
                with smtplib.SMTP("127.0.0.1", instance.port, timeout=30) as client:
                    while not self.stop.is_set():
                        if pending is None:
                            with self._lock:
                                pending = next(self._next)
                        client.sendmail(sender(pending, self.senders)[1], [SUPPORT], self.raw(pending))
                        with self._lock:
                            self.accepted.append(message_key(pending, self.senders))
                        pending = None
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the instance died under us: the message goes again, perhaps elsewhere

    def raw(self, n: int) -> bytes:
        return customer_message(n, self.size, self.senders)

    def start(self, sessions: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.session, args=(k,), daemon=True) for k in range(sessions)]
        for thread in threads:
            thread.start()
        return threads


def message_key(n: int, senders: int) -> str:
    """The Message-ID of message n, as the intake stores it."""
    domain = sender(n, senders)[1].rpartition("@")[2]
    return f"<{n:010d}.bench@{domain}>"


def outstanding(engine: sa.Engine, accepted: set[str]) -> tuple[int, int]:
    """(accepted messages that are not tickets yet, tickets whose confirmation is not sent yet)."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(InboundMessage.message_id, Ticket.confirmation_sent_at)
            .join(Ticket, Ticket.id == InboundMessage.ticket_id)
            .where(InboundMessage.action == "created")
        ).all()
    done = {key: sent is not None for key, sent in rows}
    return len(accepted - done.keys()), sum(1 for key in accepted if key in done and not done[key])


def claimed(engine: sa.Engine, pid: int | None) -> tuple[set[int], set[int]]:
    """The inbound messages and outbox items held claimed right now: all of them, or those of process `pid`
    (claims name their holder `host/pid/start`, mailbot.leases)."""
    with engine.connect() as connection:
        inbound, outbox = (
            set(
                connection.scalars(
                    sa.select(model.id).where(
                        model.status == "pending",
                        model.claimed_until.is_not(None),
                        model.claimed_by.contains(f"/{pid}/") if pid else sa.true(),
                    )
                )
            )
            for model in (InboundMessage, OutboxItem)
        )
    return inbound, outbox


def unfinished(engine: sa.Engine, inbound: set[int], outbox: set[int]) -> int:
    """How many of these rows are not done yet (not processed, not sent)."""
    with engine.connect() as connection:
        return sum(
            int(connection.scalar(sa.select(sa.func.count()).where(model.id.in_(ids), model.status == "pending")) or 0)
            for model, ids in ((InboundMessage, inbound), (OutboxItem, outbox))
            if ids
        )


def doubles(engine: sa.Engine, instances: list[Instance]) -> tuple[int, int]:
    """(Message-IDs that opened more than one ticket, confirmations written more than once)."""
    with engine.connect() as connection:
        created = Counter(
            connection.scalars(sa.select(InboundMessage.message_id).where(InboundMessage.action == "created"))
        )
    written: Counter[str] = Counter()
    for instance in instances:
        for path in (instance.sent / "new").glob("*"):
            with path.open("rb") as handle:
                written[str(message_from_binary_file(handle)["Message-ID"])] += 1
    return sum(1 for c in created.values() if c > 1), sum(1 for c in written.values() if c > 1)


def scenario(url: str, workdir: Path, args: argparse.Namespace) -> dict[str, object]:
    instances = [Instance(workdir, url, n) for n in range(args.instances)]
    instances[0].prepare(args.senders)
    for instance in instances:
        instance.start()
    load_ = Load(instances, args.size, args.senders)
    threads = load_.start(args.sessions)
    restarted = 0.0
    engine = sa.create_engine(url)
    stranded: tuple[set[int], set[int]] | None = None
    try:
        for kill in range(args.kills):
            time.sleep(args.interval)
            victim = instances[kill % len(instances)]
            if kill == args.kills - 1:
                load_.stop.set()  # the last kill ends the load: what follows is recovery alone
            pid = victim.process.pid if victim.process else None
            victim.kill()
            if kill == args.kills - 1:  # with several instances, only the killed one's claims
                stranded = claimed(engine, pid if len(instances) > 1 else None)
            restarted = time.monotonic()
            victim.start()
        for thread in threads:
            thread.join()
        accepted = set(load_.accepted)
        left = (len(accepted), len(accepted))
        after: dict[int, tuple[int, int]] = {}
        claims_done: float | None = None
        while (left := outstanding(engine, accepted)) != (0, 0):
            waited = time.monotonic() - restarted
            if stranded and claims_done is None and not unfinished(engine, *stranded):
                claims_done = waited
            for mark in (1, 5, 30):
                if waited >= mark and mark not in after:
                    after[mark] = left
            if waited > args.give_up:
                break
            time.sleep(0.25)
        recovered = time.monotonic() - restarted
        if stranded and claims_done is None and not unfinished(engine, *stranded):
            claims_done = recovered
        twice = doubles(engine, instances)
        engine.dispose()
    finally:
        load_.stop.set()
        for instance in instances:
            instance.stop()
    return {
        "accepted": len(accepted),
        "kills": args.kills,
        "recovered_s": recovered if left == (0, 0) else None,
        "stranded": len(stranded[0]) + len(stranded[1]) if stranded else None,
        "claims_s": claims_done,
        "not_tickets": left[0],
        "after": after,
        "twice_tickets": twice[0],
        "twice_sent": twice[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--interval", type=float, default=4.0, help="seconds of load between kills")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=100)
    parser.add_argument("--give-up", type=float, default=600.0, help="seconds after the last restart")
    args = parser.parse_args()
    print(f"{args.instances} instance(s), {args.kills} kills {args.interval:g} s apart, {args.sessions} sessions, "
          f"{args.size} B messages from {args.senders} contacts")
    print(f"{'database':10} {'accepted':>8} {'recovered':>10} {'open@1s':>8} {'open@5s':>8} {'open@30s':>8} "
          f"{'claimed':>7} {'claims':>8} {'2 tickets':>9} {'2 sent':>6}")
    for kind in args.databases:
        with tempfile.TemporaryDirectory(prefix="mailbot-recovery-") as tmp, database(kind, Path(tmp)) as url:
            result = scenario(url, Path(tmp), args)
        after = result["after"]
        assert isinstance(after, dict)
        marks = [sum(after[m]) if m in after else 0 for m in (1, 5, 30)]
        recovered = result["recovered_s"]
        shown = f"{recovered:.1f} s" if isinstance(recovered, float) else f">{args.give_up:g} s"
        claims = result["claims_s"]
        stranded = result["stranded"]
        freed = f"{claims:.1f} s" if isinstance(claims, float) else ("never" if stranded else "-")
        print(f"{kind:10} {result['accepted']:>8,} {shown:>10} {marks[0]:>8} {marks[1]:>8} {marks[2]:>8} "
              f"{'-' if stranded is None else stranded:>7} {freed:>8} {result['twice_tickets']:>9} "
              f"{result['twice_sent']:>6}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

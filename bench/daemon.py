"""The whole `mailbot run`, as users run it, against a null aiosmtpd handler in the same run: how fast it
accepts mail, how fast that mail becomes tickets with confirmations sent, and what it costs in CPU.

Servers:
  null     bench/listener.py's: aiosmtpd with a handler that answers 250 and discards the message, with the
           listener's aiosmtpd settings, in a process of its own.
  mailbot  the command, `.venv/bin/mailbot --config FILE run` (bench/instance.py), on a fresh configuration in
           a temporary folder: SQLite there, or with --database postgresql a private database on
           127.0.0.1:5432 dropped afterwards. `mailbot db upgrade` first, then corpus.SENDERS customers
           registered as named contacts (every message entitled, owing a confirmation); the loop governor's
           per-address limits lifted (corpus.SECURITY); outgoing mail to a maildir in the folder.
Load: --sessions concurrent SMTP sessions send --messages messages of about --size bytes from the named
contacts, with bench/listener.py's asyncio client (it times each message's 250); with --smtp-source also with
Postfix's smtp-source (C, far cheaper for the load generator; one process per session, each from a named
contact of its own, other contacts each round; it reports no latencies). Each round, the servers take turns
with each load generator; then the medians.

Columns:
  msgs/s   accepted messages per second, from the first MAIL to the last 250
  /null    msgs/s as a share of the null handler's in the same round; on a medians line, the median of the
           rounds' shares (each round's pair measured back to back, so a round the machine ran slower for
           both does not count against either)
  p50/p99  accept latency, from writing the end of a message's DATA to reading its 250, in milliseconds
  e2e/s    messages per second from the first MAIL until every message is a ticket with its confirmation
           queued in the outbox
  sent s   seconds from the first MAIL until every confirmation is sent (written to the maildir)
  ms cpu   CPU per message of the server's whole process tree (`mailbot run` and every process it started,
           bench/instance.py), from the start of the load until every confirmation is sent
  cores    that CPU as a share of one core over the same time
  doors, intake, sender
           the same CPU per message, by process (layout "processes"): the `mailbot run` process (the doors,
           systemd's protocol), the intake worker, the sender worker
  send ms  CPU of the tree per confirmation sent once every confirmation was queued (the intake done, the
           sender working off the rest): what sending one costs, when enough were left to send
  db ms    (PostgreSQL) CPU per message of the database server's backends serving mailbot; approximate (a
           backend that exits meanwhile is not counted)
  procs    processes in the tree when the round ended
  cli cpu  the load generator's CPU while it sent, as a share of one core
Progress is read from the database by this process every 50 ms (SQLite read-only), not from /metrics:
each scrape would have the daemon run the overview's queries on its own CPU.

    .venv/bin/python bench/daemon.py [--database sqlite|postgresql ...] [--messages 3000] [--size 2000]
                                     [--sessions 10] [--rounds 3] [--smtp-source] [--give-up 600] [--dkim]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import SENDERS, Template
from instance import Instance, process_cpu
from listener import Run, Server, combined, load, machine, smtp_source
from processing import database

from mailbot.store.schema import InboundMessage, OutboxItem

POLL = 0.05
WARM_UP = 300


@dataclass
class Progress:
    """Counts in the daemon's database."""

    stored: int  # inbound messages
    pending: int  # of those, not decided yet
    created: int  # of those, the ones that opened a ticket
    queued: int  # confirmations in the outbox, sent or not
    sent: int  # of those, sent

    def __sub__(self, other: Progress) -> Progress:
        return Progress(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


class Watcher:
    """This process's view of the daemon's database, on one connection of its own."""

    INBOUND = sa.select(
        sa.func.count(),
        sa.func.count().filter(InboundMessage.status == "pending"),
        sa.func.count().filter(InboundMessage.action == "created"),
    ).select_from(InboundMessage)
    OUTBOX = sa.select(sa.func.count(), sa.func.count().filter(OutboxItem.status == "sent")).where(
        OutboxItem.kind == "confirmation"
    )
    BACKENDS = sa.text(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            url = f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
        self.engine = sa.create_engine(url)
        self.connection = self.engine.connect()

    def progress(self) -> Progress:
        inbound = self.connection.execute(self.INBOUND).one()
        outbox = self.connection.execute(self.OUTBOX).one()
        self.connection.rollback()  # no snapshot held between polls
        return Progress(*inbound, *outbox)

    def backends(self) -> dict[int, float]:
        """PostgreSQL: the CPU seconds of each backend serving the daemon; SQLite: none."""
        if self.engine.dialect.name != "postgresql":
            return {}
        pids = list(self.connection.scalars(self.BACKENDS))
        self.connection.rollback()
        return {pid: process_cpu(pid) for pid in pids}

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


def daemon_round(
    instance: Instance, watcher: Watcher, send: Callable[[], Run], messages: int, give_up: float
) -> dict[str, Any]:
    """One load against `mailbot run`, then the wait until every message is a ticket whose confirmation
    was sent; the figures of the module docstring."""
    start, (cpu, _), backends = watcher.progress(), instance.cpu(), watcher.backends()
    roles = instance.cpu_by_role()
    run = send()
    loaded = time.perf_counter()
    queued_after: float | None = None
    while True:
        waited = time.perf_counter() - loaded
        done = watcher.progress() - start
        if queued_after is None and done.queued >= messages:
            queued_after, (queued_cpu, _), sent_then = waited, instance.cpu(), done.sent
        if queued_after is not None and done.sent >= messages:
            break
        if done.stored >= messages and not done.pending and done.created < messages:
            raise SystemExit(f"only {done.created} of {messages} messages opened a ticket: {done}")
        if waited > give_up:
            raise SystemExit(f"gave up {give_up:g} s after the last 250: {done}")
        time.sleep(POLL)
    assert queued_after is not None
    total, procs = instance.cpu()
    spent = total - cpu
    by_role = {role: (spent_by - roles.get(role, 0.0)) / messages for role, spent_by in instance.cpu_by_role().items()}
    after = watcher.backends()
    all_sent = run.seconds + waited
    result = {
        "rate": run.rate,
        "latencies": run.latencies,
        "end_to_end": messages / (run.seconds + queued_after),
        "all_sent": all_sent,
        "cpu_per_message": spent / messages,
        "cores": spent / all_sent,
        "procs": procs,
        "client_cpu": run.client_cpu / run.seconds,
        **{role: by_role[role] for role in ROLES if role in by_role},
    }
    if messages - sent_then >= messages / 10:  # enough sending left after the intake for a figure
        result["send_per_message"] = (total - queued_cpu) / (messages - sent_then)
    if after:
        result["db_per_message"] = sum(t - backends.get(pid, 0.0) for pid, t in after.items()) / messages
    return result


def null_round(server: Server, send: Callable[[], Run]) -> dict[str, Any]:
    before = server.stats()["cpu"]
    run = send()
    spent = server.stats()["cpu"] - before
    return {
        "rate": run.rate,
        "latencies": run.latencies,
        "cpu_per_message": spent / run.messages,
        "cores": spent / run.seconds,
        "procs": 1,
        "client_cpu": run.client_cpu / run.seconds,
    }


HEADER = (
    f"{'database':<10} {'load':<13} {'server':<7} {'msgs/s':>7} {'/null':>5} {'p50 ms':>6} {'p99 ms':>6}"
    f" {'e2e/s':>6} {'sent s':>6} {'ms cpu':>6} {'cores':>5} {'send ms':>7} {'db ms':>5} {'procs':>5}"
    f" {'cli cpu':>7} {'doors':>5} {'intake':>6} {'sender':>6}"
)
ROLES = ("doors", "intake", "sender")


def row(database: str, generator: str, kind: str, result: dict[str, Any]) -> str:
    def shown(key: str, form: str, scale: float = 1.0) -> str:
        return format(result[key] * scale, form) if key in result else "-"

    ratio = f"{result['share']:.0%}" if kind != "null" else "-"
    return (
        f"{database:<10} {generator:<13} {kind:<7} {result['rate']:>7,.0f} {ratio:>5}"
        f" {shown('p50', '.1f'):>6} {shown('p99', '.1f'):>6} {shown('end_to_end', ',.0f'):>6}"
        f" {shown('all_sent', '.1f'):>6} {shown('cpu_per_message', '.2f', 1000):>6} {result['cores']:>5.0%}"
        f" {shown('send_per_message', '.2f', 1000):>7} {shown('db_per_message', '.2f', 1000):>5}"
        f" {result['procs']:>5.0f} {result['client_cpu']:>7.0%} {shown('doors', '.2f', 1000):>5}"
        f" {shown('intake', '.2f', 1000):>6} {shown('sender', '.2f', 1000):>6}"
    )


class Numbers:
    """Message numbers for the asyncio client, never used twice (each one is a Message-ID)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, count: int) -> int:
        first, self.next = self.next, self.next + count
        return first


def measure(kind: str, null: Server, workdir: Path, args: argparse.Namespace, numbers: Numbers) -> None:
    """Start `mailbot run` on a fresh `kind` database, warm both servers up, then the rounds in turns."""
    template = Template(args.size)

    def client(port: int, messages: int) -> Callable[[], Run]:
        first = numbers.take(messages)
        return lambda: asyncio.run(load(port, template, messages, args.sessions, first))

    def postfix(port: int, n: int) -> Callable[[], Run]:
        first_sender = n * args.sessions % SENDERS  # other customers each round
        return lambda: smtp_source(port, args.size, args.messages, args.sessions, first_sender)

    generators: dict[str, Callable[[int, int], Callable[[], Run]]] = {
        "client": lambda port, n: client(port, args.messages)
    }
    if args.smtp_source:
        generators["smtp-source"] = postfix
    with database(kind, workdir) as url:
        instance = Instance(workdir, url, dkim=args.dkim)
        instance.prepare(SENDERS)
        instance.start()
        watcher = Watcher(url)
        try:
            null_round(null, client(null.port, WARM_UP))  # connections, imports, caches: not measured
            daemon_round(instance, watcher, client(instance.port, WARM_UP), WARM_UP, args.give_up)
            runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for n in range(args.rounds):
                for generator, make in generators.items():
                    null_run = null_round(null, make(null.port, n))
                    mailbot_run = daemon_round(
                        instance, watcher, make(instance.port, n), args.messages, args.give_up
                    )
                    mailbot_run["share"] = mailbot_run["rate"] / null_run["rate"]
                    for server, result in (("null", null_run), ("mailbot", mailbot_run)):
                        runs.setdefault((generator, server), []).append(result)
                        line = row(kind, f"{generator} {n + 1}", server, combined([result]))
                        print(line, flush=True)
            print(f"medians of {args.rounds} rounds:")
            for generator in generators:
                medians = {server: combined(runs[generator, server]) for server in ("null", "mailbot")}
                for server, result in medians.items():
                    print(row(kind, generator, server, result), flush=True)
        finally:
            stopped = instance.stop()
            left = watcher.progress()
            watcher.close()
        exited = "did not exit: killed" if stopped is None else f"exited {stopped:.1f} s after SIGTERM"
        print(
            f"{kind}: `mailbot run` {exited}; then {left.pending} messages pending, "
            f"{left.queued - left.sent} confirmations unsent\n",
            flush=True,
        )


def interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # so every `finally` stops its servers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite"])
    parser.add_argument("--messages", type=int, default=3000, help="messages per round and server")
    parser.add_argument("--size", type=int, default=2000, help="bytes per message")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns (medians reported)")
    parser.add_argument(
        "--smtp-source", action="store_true", help="also load both with Postfix's smtp-source"
    )
    parser.add_argument("--give-up", type=float, default=600.0, help="seconds to wait after the last 250")
    parser.add_argument("--dkim", action="store_true", help="mailbot signs what it sends (a new 2048-bit key)")
    args = parser.parse_args()
    if args.smtp_source and shutil.which("smtp-source") is None:
        parser.error("smtp-source not found (Debian: apt-get install postfix, 'No configuration')")
    signal.signal(signal.SIGTERM, interrupted)
    print(
        f"# {machine()}, load average {os.getloadavg()[0]:.1f}; {args.messages} messages of {args.size} B "
        f"over {args.sessions} sessions from {SENDERS} named contacts, {args.rounds} rounds",
        flush=True,
    )
    print(HEADER)
    numbers = Numbers()
    with tempfile.TemporaryDirectory(prefix="mailbot-daemon-") as tmp:
        (Path(tmp) / "null").mkdir()
        null = Server("null", Path(tmp) / "null", pin=False)
        try:
            for kind in args.database:
                (Path(tmp) / kind).mkdir()
                measure(kind, null, Path(tmp) / kind, args, numbers)
        finally:
            null.stop()


if __name__ == "__main__":
    main()

"""How fast the intake runner turns stored mail into tickets with queued confirmations, against baselines
measured in the same run on the same messages.

For each database (SQLite in a temporary folder, durable as shipped: WAL, synchronous=FULL; and PostgreSQL,
in a private database created for the run and dropped after), in this process:
  1. registers the customers as named contacts (corpus.register_senders), so every message goes through
     the whole entitlement step and is entitled;
  2. baseline "parse": mailbot.parse.parse() of every message, nothing stored;
  3. baseline "insert": the door's own insert of every message as a pending row, in batches of --batch
     (these rows are the ones processed next);
  4. "process": Processor.run_once() until nothing is pending; every message must have become a ticket
     with its confirmation queued in the outbox. With --workers N, N processes of their own do it
     together (instances sharing one database, as several `mailbot run` would).
CPU per message counts this process and its workers, not the PostgreSQL server.
Messages are customer questions of about --size bytes submitted over SMTP from 127.0.0.1, with the shipped
trial setting trust_local_submission = true (so no DNS), each from one of --senders contacts
(corpus.SECURITY).

    .venv/bin/python bench/processing.py [--messages 3000] [--size 2000] [--senders 1000]
                                         [--batch 25] [--databases sqlite postgresql] [--workers 1]
                                         [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import SUPPORT, customer_message, register_senders, sender
from instance import settings

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.config import from_mapping
from mailbot.errors import TransientStoreError
from mailbot.parse import ParseLimits, parse
from mailbot.processor import BATCH
from mailbot.store import inbound as inbound_store
from mailbot.store.inbound import RawMessage
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket

PG_ADMIN_URL = os.environ.get("MAILBOT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TUESDAY_10_ET = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)  # inside business hours


def make_app(url: str, workdir: Path) -> App:
    app = App(from_mapping(settings(url, workdir / "sent"), "bench"), FrozenClock(TUESDAY_10_ET))
    app.db.upgrade()
    return app


def count(app: App, model: type, **where: object) -> int:
    statement = sa.select(sa.func.count()).select_from(model).filter_by(**where)
    return int(app.db.call(lambda s: s.scalar(statement)))


def cpu_seconds() -> float:
    """CPU used by this process and by its finished child processes (--workers); not PostgreSQL's."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(what: str, work: Callable[[], int], baseline: float | None = None) -> float:
    """Run `work` (it returns how many messages it handled); print and return messages per second."""
    cpu, begin = cpu_seconds(), time.perf_counter()
    handled = work()
    seconds, cpu = time.perf_counter() - begin, cpu_seconds() - cpu
    rate = handled / seconds
    versus = f"  {rate / baseline:6.1%} of parse" if baseline else ""
    print(
        f"  {what:<34} {rate:>9,.0f} msgs/s  {cpu / handled * 1e6:>6.0f} µs CPU/msg"
        f"  ({seconds:.2f} s){versus}",
        flush=True,
    )
    return rate


def drain(app: App) -> int:
    """Run the intake until nothing is pending; how many messages it handled. A database still locked
    after its lock timeout (another instance holding SQLite's write lock) is tried again, as the daemon's
    runner does, and said once at the end."""
    done = locked = 0
    while True:
        try:
            outcomes = app.processor.run_once()
        except TransientStoreError:
            locked += 1
            continue
        if not outcomes:
            break
        done += len(outcomes)
    if locked:
        print(f"  (a runner found the database locked past its lock timeout {locked} times)", flush=True)
    return done


def drain_worker(url: str, workdir: str, batch: int, ready: Queue[int], go: Event, done: Queue[int]) -> None:
    """One more instance on the same database (a process of its own), draining it once told to go."""
    app = make_app(url, Path(workdir))
    app.processor.batch = batch
    ready.put(0)
    go.wait()
    handled = -1  # what the parent learns if this worker fails
    try:
        handled = drain(app)
    finally:
        done.put(handled)
        app.close()


def workers_ready(url: str, workdir: Path, batch: int, workers: int) -> Callable[[], int]:
    """Start `workers` processes, each with its own App; the function returned lets them drain the database
    and waits for them (so their start-up is not timed). Leases keep them off each other's rows."""
    ready: Queue[int] = multiprocessing.Queue()
    done: Queue[int] = multiprocessing.Queue()
    go = multiprocessing.Event()
    processes = [
        multiprocessing.Process(target=drain_worker, args=(url, str(workdir), batch, ready, go, done))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get()

    def run() -> int:
        go.set()
        handled = [done.get() for _ in processes]
        for process in processes:
            process.join()
        if min(handled) < 0:
            raise SystemExit("a worker failed (its traceback is above)")
        return sum(handled)

    return run


def measure(url: str, workdir: Path, raws: list[bytes], args: argparse.Namespace) -> None:
    """The three passes on one database (see the module docstring)."""
    app = make_app(url, workdir)
    try:
        passes(app, url, workdir, raws, args.senders, args.batch, args.workers, args.profile)
    finally:
        app.close()


def passes(
    app: App,
    url: str,
    workdir: Path,
    raws: list[bytes],
    senders: int,
    batch: int,
    workers: int,
    profile: Path | None,
) -> None:
    register_senders(app, senders)
    limits = ParseLimits()

    def parse_all() -> int:
        for raw in raws:
            parse(raw, limits)
        return len(raws)

    parse_rate = timed("parse (baseline)", parse_all)

    def insert() -> int:
        now = app.clock.now()
        for first in range(0, len(raws), batch):
            messages = [
                RawMessage(raw, "smtp", sender(n, senders)[1], (SUPPORT,), "127.0.0.1")
                for n, raw in enumerate(raws[first : first + batch], start=first)
            ]
            app.db.call(inbound_store.insert_many, messages, now)
        return len(raws)

    timed(f"door insert, {batch} rows a commit", insert, parse_rate)
    if workers > 1:
        timed(
            f"process, {batch} rows a commit, {workers} procs",
            workers_ready(url, workdir, batch, workers),
            parse_rate,
        )
    elif profile is not None:
        app.processor.batch = batch
        with cProfile.Profile() as profiler:
            timed(f"process, {batch} rows a commit", lambda: drain(app), parse_rate)
        profiler.dump_stats(profile)
    else:
        app.processor.batch = batch
        timed(f"process, {batch} rows a commit", lambda: drain(app), parse_rate)
    tickets, queued = count(app, Ticket, status="new"), count(app, OutboxItem, kind="confirmation")
    pending = count(app, InboundMessage, status="pending")
    print(f"  {tickets} tickets opened, {queued} confirmations queued, {pending} messages left pending")
    if tickets != len(raws) or queued != len(raws):
        raise SystemExit("not every message became a ticket with its confirmation queued")


@contextmanager
def private_postgres() -> Iterator[str]:
    """A database of its own on the PostgreSQL server, dropped afterwards."""
    name = f"mailbot_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'mailbot.db'}"
    else:
        with private_postgres() as url:
            yield url


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=2000, help="bytes per message")
    parser.add_argument("--senders", type=int, default=1000, help="distinct customers (named contacts)")
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per commit (default: the Processor's)")
    parser.add_argument(
        "--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes running the intake (default: this one)"
    )
    parser.add_argument(
        "--profile", type=Path, help="write a cProfile of the processing pass (last database; one worker)"
    )
    args = parser.parse_args()
    raws = [customer_message(n, args.size, args.senders) for n in range(args.messages)]
    print(
        f"{args.messages} messages of about {args.size} bytes from {args.senders} named contacts; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    for kind in args.databases:
        with tempfile.TemporaryDirectory(prefix="mailbot-bench-") as tmp, database(kind, Path(tmp)) as url:
            print(kind, flush=True)
            measure(url, Path(tmp), raws, args)


if __name__ == "__main__":
    main()

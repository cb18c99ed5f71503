"""What sending costs: CPU per message of `Sender.drain` sending queued confirmations, one tree against another.

Each measurement runs in a fresh process of its own, on the code of the tree it is given (`--trees`; the
first is the baseline): the intake turns --messages customer questions (corpus.customer_message, from
named contacts) into tickets with their confirmations queued; then one `drain` is timed, sending every
confirmation through the transport: `maildir` (durable: fsync of the file and of the folder) or `smtp`, a
real aiosmtpd relay on 127.0.0.1 that accepts and discards, in a process of its own (its CPU is not ours).
CPU per message is the measuring process's own (getrusage, all its threads; `loop µs`: the event-loop
thread's alone), not PostgreSQL's. Every
confirmation must be sent and its ticket's confirmation_sent_at set, or the run fails. The trees take
turns, --rounds times, and the medians are shown with the ratio to the first tree.

    .venv/bin/python bench/sending.py --trees /tmp/sender-base . [--messages 2000] [--rounds 3]
                                      [--transports maildir smtp] [--databases sqlite postgresql]
                                      [--dkim]
    .venv/bin/python bench/sending.py --one --code . --transport smtp --database sqlite --profile FILE
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def relay(ready: Any, stop: Any, stats: Any) -> None:
    """A relay that accepts and discards, counting messages and connections (in a process of its own)."""
    import asyncio

    from aiosmtpd.smtp import SMTP

    counts = {"messages": 0, "connections": 0}

    class Discard:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            counts["messages"] += 1
            return "250 2.0.0 OK"

    def session() -> SMTP:
        counts["connections"] += 1
        return SMTP(Discard(), hostname="relay.bench.example", enable_SMTPUTF8=True)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(session, host="127.0.0.1", port=0)
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.to_thread(stop.wait)
        server.close()
        stats.put(counts)

    asyncio.run(serve())


def one(args: argparse.Namespace) -> None:
    """One measurement, on the code of `args.code`: prints one JSON line."""
    sys.path.insert(0, str(Path(args.code).resolve()))
    import mailbot  # from that tree, before bench/processing.py puts this one first

    assert Path(mailbot.__file__).resolve().parent.parent == Path(args.code).resolve()
    sys.path.insert(1, str(HERE))
    import asyncio

    import sqlalchemy as sa
    from corpus import SECURITY, SUPPORT, customer_message, register_senders
    from processing import TUESDAY_10_ET, database, drain

    from mailbot.app import App
    from mailbot.clock import FrozenClock
    from mailbot.config import from_mapping
    from mailbot.store import inbound as inbound_store
    from mailbot.store.inbound import RawMessage
    from mailbot.store.schema import OutboxItem, Ticket

    with tempfile.TemporaryDirectory(prefix="mailbot-bench-") as tmp, database(args.database, Path(tmp)) as url:
        relayed = None
        if args.transport == "smtp":
            ready, stop, stats = multiprocessing.Queue(), multiprocessing.Event(), multiprocessing.Queue()
            relayed = multiprocessing.Process(target=relay, args=(ready, stop, stats))
            relayed.start()
            outbound: dict[str, Any] = {"transport": "smtp", "host": "127.0.0.1", "port": ready.get()}
        else:
            outbound = {"transport": "maildir", "maildir": str(Path(tmp) / "sent")}
        if args.dkim:
            key = Path(tmp) / "dkim.pem"
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
            outbound["dkim"] = {"domain": "schoolmint.com", "selector": "mailbot", "private_key_file": str(key)}
        config = from_mapping(
            {
                "database": {"url": url},
                "support": {"addresses": [SUPPORT], "from": f"Hero Support <{SUPPORT}>"},
                "outbound": outbound,
                "security": SECURITY,
            },
            "bench",
        )
        app = App(config, FrozenClock(TUESDAY_10_ET))
        app.db.upgrade()
        register_senders(app, args.senders)
        raws = [customer_message(n, 2000, args.senders) for n in range(args.messages)]
        messages = [RawMessage(raw, "smtp", None, (SUPPORT,), "127.0.0.1") for raw in raws]
        for first in range(0, len(messages), 100):
            app.db.call(inbound_store.insert_many, messages[first : first + 100], app.clock.now())
        drain(app)
        app.sender  # built (and its DKIM key read) before the clock starts  # noqa: B018

        profiler = cProfile.Profile(time.thread_time) if args.profile else None  # CPU, not waits
        cpu, begin, loop_cpu = cpu_seconds(), time.perf_counter(), time.thread_time()
        if profiler:
            profiler.enable()
        sent = asyncio.run(app.sender.drain())
        cpu, seconds, loop_cpu = cpu_seconds() - cpu, time.perf_counter() - begin, time.thread_time() - loop_cpu
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)

        confirmed = app.db.call(
            lambda s: s.scalar(sa.select(sa.func.count()).select_from(Ticket).where(Ticket.confirmation_sent_at.is_not(None)))
        )
        marked = app.db.call(
            lambda s: s.scalar(sa.select(sa.func.count()).select_from(OutboxItem).where(OutboxItem.status == "sent"))
        )
        result = {"cpu_us": cpu / sent * 1e6, "loop_us": loop_cpu / sent * 1e6, "rate": sent / seconds, "sent": sent}
        if relayed is not None:
            stop.set()
            result |= stats.get()
            relayed.join()
        app.close()
    if not sent == marked == confirmed == args.messages or result.get("messages", sent) != sent:
        raise SystemExit(f"not every confirmation was sent and recorded: {result}, marked {marked}, tickets {confirmed}")
    print(json.dumps(result), flush=True)


def measure(code: str, transport: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--one", "--code", code, "--transport", transport, "--database", database,
        "--messages", str(args.messages), "--senders", str(args.senders),
    ] + (["--dkim"] if args.dkim else [])
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", default=[str(HERE.parent)], help="source trees; the first is the baseline")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=1000, help="distinct customers (named contacts)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transports", nargs="+", choices=["maildir", "smtp"], default=["maildir", "smtp"])
    parser.add_argument("--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite"])
    parser.add_argument("--dkim", action="store_true", help="sign every message (a 2048-bit RSA key)")
    parser.add_argument("--profile", help="with --one: write a cProfile of the drain (its event-loop thread)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--code", default=str(HERE.parent), help=argparse.SUPPRESS)
    parser.add_argument("--transport", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args)
        return
    print(
        f"{args.messages} confirmations, {args.rounds} rounds in turns{', DKIM-signed' if args.dkim else ''}; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print(
        f"  {'database':<10} {'transport':<9} {'tree':<24} {'µs CPU/msg':>10} {'loop µs':>8} {'msgs/s':>8}"
        f" {'conns':>6} {'CPU ratio':>9}"
    )
    for database in args.databases:
        for transport in args.transports:
            runs: dict[str, list[dict[str, Any]]] = {tree: [] for tree in args.trees}
            for _ in range(args.rounds):
                for tree in args.trees:
                    runs[tree].append(measure(tree, transport, database, args))
            base = statistics.median(r["cpu_us"] for r in runs[args.trees[0]])
            for tree in args.trees:
                cpu, loop, rate = (statistics.median(r[key] for r in runs[tree]) for key in ("cpu_us", "loop_us", "rate"))
                connections = str(runs[tree][-1].get("connections", "-"))
                print(
                    f"  {database:<10} {transport:<9} {tree[-24:]:<24} {cpu:>10.0f} {loop:>8.0f} {rate:>8,.0f}"
                    f" {connections:>6} {cpu / base:>9.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

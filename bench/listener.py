"""How fast mailbot's SMTP listener accepts mail, against a null aiosmtpd handler, in the same run.

Servers (each in its own process, listening on 127.0.0.1 port 0):
  null     aiosmtpd's SMTP class with a handler that answers 250 and discards the message, with the
           listener's own aiosmtpd settings (hostname given, so no socket.getfqdn() per connection).
  mailbot  mailbot's listener (listener.start + Handler + Door) on a fresh SQLite database in a temporary
           folder, durable as shipped (WAL, synchronous=FULL): 250 only after the commit.
  daemon   (with --daemon) the whole mailbot Daemon: the same listener while the intake runner turns the
           stored mail into tickets and the sender writes confirmations to a maildir, all in one process.
           Its customers are named contacts (corpus.register_senders), as in bench/processing.py.

The load generator is this process: a plain asyncio SMTP client (EHLO once per session, then MAIL, RCPT,
DATA for each message on the same connection, no pipelining) over 1 and 10 concurrent sessions. Each
scenario runs --rounds times, the servers taking turns, and the medians are reported. Columns:
  msgs/s   accepted messages per second (from the first MAIL to the last 250)
  p50/p99  accept latency: from writing the end of a message's DATA to reading its 250, in milliseconds
  µs cpu   CPU the server process spent per message (all its threads, user and system)
  srv/cli  CPU use of the server and of the load generator while it ran (100% = one core)
  batch    messages per database commit (the door's group commit)
  /null    msgs/s as a share of the null handler's in the same scenario
  e2e/s    (daemon) messages per second from the first MAIL until every message was a ticket
With --pin the servers run on CPU 0 and the load generator on CPU 1 (steadier on an idle machine; on a
shared one a pinned process cannot move away from a busy core, so it is off by default).

    .venv/bin/python bench/listener.py [--sizes 2000 100000] [--messages 3000 600] [--sessions 1 10]
                                       [--rounds 3] [--daemon] [--smtp-source] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiosmtpd.smtp import SMTP, Envelope, Session
from corpus import SUPPORT, Template, register_senders, sender
from instance import HOST, HOSTNAME, settings
from sqlalchemy import func, select

from mailbot import listener
from mailbot.app import App
from mailbot.config import Config, from_mapping
from mailbot.daemon import Daemon
from mailbot.door import Door
from mailbot.store.schema import InboundMessage

SERVER_CPU, CLIENT_CPU = 0, 1
SERVERS = ("null", "mailbot", "daemon")


def bench_config(workdir: Path) -> Config:
    return from_mapping(settings(f"sqlite:///{workdir / 'mailbot.db'}", workdir / "sent", port=0), "bench")


class NullHandler:
    """Accept and discard."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"


class CountingDoor(Door):
    """mailbot's Door, counting its commits so the report can show how many messages share one."""

    commits = 0
    stored = 0

    async def _commit(self) -> int:
        stored = await super()._commit()
        self.commits += 1
        self.stored += stored
        return stored


@dataclass
class Served:
    """A server running in its process: what the load generator needs to reach and query it."""

    port: int
    stats: Callable[[], dict[str, Any]]
    stop: Callable[[], Awaitable[None]]


async def start_null(config: Config) -> Served:
    smtp = config.smtp

    def factory() -> SMTP:
        # The listener's own aiosmtpd settings (mailbot.listener.start), minus mailbot's handler.
        return SMTP(
            NullHandler(),
            data_size_limit=smtp.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=HOSTNAME,
            ident="mailbot",
            timeout=smtp.timeout.total_seconds(),
            command_call_limit=listener.command_budget(smtp.max_commands),
        )

    server = await asyncio.get_running_loop().create_server(factory, host=HOST, port=0)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return Served(server.sockets[0].getsockname()[1], dict, stop)


def door_stats(app: App, door: CountingDoor) -> Callable[[], dict[str, Any]]:
    def stats() -> dict[str, Any]:
        waiting = select(func.count()).select_from(InboundMessage).where(InboundMessage.status == "pending")
        return {
            "commits": door.commits,
            "stored": door.stored,
            "pending": app.db.call(lambda s: s.scalar(waiting)),
        }

    return stats


async def start_mailbot(config: Config) -> Served:
    app = App(config)
    app.db.upgrade()
    door = CountingDoor(app.db, app.clock)
    handler = listener.Handler(door, config.smtp, config.support.addresses, app.clock, HOSTNAME)
    server = await listener.start(handler, config.smtp, host=HOST, port=0)

    async def stop() -> None:
        server.close()
        await door.close()
        app.close()

    return Served(server.sockets[0].getsockname()[1], door_stats(app, door), stop)


async def start_daemon(config: Config) -> Served:
    app = App(config)
    app.db.upgrade()
    register_senders(app)
    daemon = Daemon(app)
    door = CountingDoor(app.db, app.clock, on_stored=app.processor.wake)
    daemon.door = door
    await daemon.start()

    async def stop() -> None:
        await daemon.stop()
        app.close()

    return Served(daemon.servers[0].sockets[0].getsockname()[1], door_stats(app, door), stop)


STARTERS = {"null": start_null, "mailbot": start_mailbot, "daemon": start_daemon}


def serve(kind: str, workdir: str, pin: bool, conn: Connection) -> None:
    """A server process: start `kind`, send its port, then answer "stats" until told "stop"."""
    if pin:
        os.sched_setaffinity(0, {SERVER_CPU})
    asyncio.run(_serve(kind, Path(workdir), conn))


async def _serve(kind: str, workdir: Path, conn: Connection) -> None:
    served = await STARTERS[kind](bench_config(workdir))
    conn.send(served.port)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def on_command() -> None:
        command = conn.recv()
        if command == "stop":
            done.set_result(None)
            return
        stats = served.stats()
        times = os.times()
        conn.send({"cpu": times.user + times.system, **stats})

    loop.add_reader(conn.fileno(), on_command)
    await done
    loop.remove_reader(conn.fileno())
    await served.stop()


class Server:
    """The orchestrator's handle on one server process."""

    def __init__(self, kind: str, workdir: Path, pin: bool) -> None:
        self.kind = kind
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(
            target=serve, args=(kind, str(workdir), pin, child), daemon=True
        )
        self.process.start()
        self.port: int = self.conn.recv()

    def stats(self) -> dict[str, Any]:
        self.conn.send("stats")
        result: dict[str, Any] = self.conn.recv()
        return result

    def settle(self) -> None:
        """Wait until the daemon's intake runner has turned every stored message into a ticket."""
        while self.kind == "daemon" and self.stats()["pending"]:
            time.sleep(0.1)

    def stop(self) -> None:
        self.conn.send("stop")
        self.process.join(10)


# ---- the load generator -----------------------------------------------------------------------------


class SmtpError(Exception):
    pass


async def reply(reader: asyncio.StreamReader, expect: bytes) -> None:
    """Read one (possibly multi-line) reply and check its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpError("connection closed")
        if line[3:4] != b"-":
            break
    if not line.startswith(expect):
        raise SmtpError(line.decode(errors="replace").strip())


def dot_stuffed(raw: bytes) -> bytes:
    """The DATA section for raw (RFC 5321 4.5.2): leading dots doubled, ended by CRLF.CRLF."""
    body = raw.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n"


async def session(
    port: int, template: Template, numbers: Iterator[int], started: asyncio.Event, latencies: list[float]
) -> int:
    """One SMTP session sending messages until `numbers` runs out; returns how many it sent."""
    reader, writer = await asyncio.open_connection(HOST, port)
    await reply(reader, b"220")
    writer.write(b"EHLO loadgen.bench.example\r\n")
    await reply(reader, b"250")
    await started.wait()
    sent = 0
    rcpt = f"RCPT TO:<{SUPPORT}>\r\n".encode()
    for n in numbers:
        writer.write(f"MAIL FROM:<{template.mail_from(n)}>\r\n".encode())
        await reply(reader, b"250")
        writer.write(rcpt)
        await reply(reader, b"250")
        writer.write(b"DATA\r\n")
        await reply(reader, b"354")
        writer.write(dot_stuffed(template.render(n)))
        start = time.perf_counter()
        await reply(reader, b"250")
        latencies.append(time.perf_counter() - start)
        sent += 1
    writer.write(b"QUIT\r\n")
    await reply(reader, b"221")
    writer.close()
    await writer.wait_closed()
    return sent


@dataclass
class Run:
    messages: int
    seconds: float
    client_cpu: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


async def load(port: int, template: Template, messages: int, sessions: int, first: int) -> Run:
    """Send `messages` messages over `sessions` concurrent sessions, timed once all sessions are greeted."""
    numbers = iter(range(first, first + messages))
    started = asyncio.Event()
    latencies: list[float] = []
    tasks = [
        asyncio.create_task(session(port, template, numbers, started, latencies)) for _ in range(sessions)
    ]
    await asyncio.sleep(0.2)  # every session connected and past EHLO
    cpu, begin = time.process_time(), time.perf_counter()
    started.set()
    sent = sum(await asyncio.gather(*tasks))
    return Run(sent, time.perf_counter() - begin, time.process_time() - cpu, latencies)


def smtp_source(port: int, size: int, messages: int, sessions: int, first_sender: int = 0) -> Run:
    """Postfix's smtp-source (C) against a server: one process per session, each sending its share of the
    messages on one connection, from a named contact of its own (senders first_sender, first_sender + 1, ...:
    one customer's ticket history does not grow `sessions` times faster than in our client's load). The time
    until the last one finished, and their CPU; no latencies (it does not report them)."""

    def command(k: int) -> list[str]:
        share = messages // sessions + (k < messages % sessions)
        return [
            "smtp-source", "-d", "-s", "1", "-m", str(share), "-l", str(size),
            "-f", sender(first_sender + k)[1], "-t", SUPPORT, "-M", "loadgen.bench.example", f"{HOST}:{port}",
        ]

    cpu, begin = children_cpu(), time.perf_counter()
    processes = [
        subprocess.Popen(command(k), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for k in range(sessions)
    ]
    for process in processes:
        _, stderr = process.communicate()
        if process.returncode:
            raise SystemExit(f"smtp-source failed: {stderr.decode(errors='replace')}")
    return Run(messages, time.perf_counter() - begin, children_cpu() - cpu, [])


def children_cpu() -> float:
    """CPU used by this process's finished child processes (user and system)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- the run -----------------------------------------------------------------------------------------


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}"


def scenario(server: Server, template: Template, messages: int, sessions: int, first: int) -> dict[str, Any]:
    """One timed run against one server, with what the server process spent meanwhile. For the daemon, also
    how long until every message became a ticket (its intake runner goes on after the last 250)."""
    before = server.stats()
    run = asyncio.run(load(server.port, template, messages, sessions, first))
    after = server.stats()
    if run.messages != messages:
        raise SystemExit(f"{server.kind}: sent {run.messages} of {messages}")
    result: dict[str, Any] = {
        "rate": run.rate,
        "latencies": run.latencies,
        "server_cpu": (after["cpu"] - before["cpu"]) / run.seconds,
        "client_cpu": run.client_cpu / run.seconds,
        "cpu_per_message": (after["cpu"] - before["cpu"]) / messages * 1e6,
    }
    if "commits" in after:
        result["batch"] = (after["stored"] - before["stored"]) / max(1, after["commits"] - before["commits"])
    if server.kind == "daemon":
        begin = time.perf_counter()
        server.settle()
        result["end_to_end"] = messages / (run.seconds + time.perf_counter() - begin)
    return result


def combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one scenario: the median of each figure over the rounds that have it, latency percentiles
    over every message (if any)."""
    latencies = [latency for run in runs for latency in run["latencies"]]
    keys = dict.fromkeys(key for run in runs for key in run if key != "latencies")
    result = {key: statistics.median(run[key] for run in runs if key in run) for key in keys}
    if len(latencies) < 2:  # smtp-source does not report them
        return result
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {**result, "p50": cuts[49] * 1000, "p99": cuts[98] * 1000}


HEADER = (
    f"{'size':>7} {'sess':>4}  {'server':<8} {'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
    f" {'µs cpu':>7} {'srv cpu':>7} {'cli cpu':>7} {'batch':>6} {'/null':>6} {'e2e/s':>6}"
)


def print_row(
    size: int, sessions: int, kind: str, result: dict[str, Any], null: dict[str, Any] | None
) -> None:
    batch = f"{result['batch']:6.1f}" if "batch" in result else "     -"
    ratio = f"{result['rate'] / null['rate']:6.0%}" if null and kind != "null" else "     -"
    end_to_end = f"{result['end_to_end']:6,.0f}" if "end_to_end" in result else "     -"
    print(
        f"{size:>7} {sessions:>4}  {kind:<8} {result['rate']:>8,.0f}"
        f" {result['p50']:>7.2f} {result['p99']:>7.2f} {result['cpu_per_message']:>7.0f} {result['server_cpu']:>7.0%} {result['client_cpu']:>7.0%}"
        f" {batch} {ratio} {end_to_end}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 100000], help="message sizes in bytes")
    parser.add_argument(
        "--messages", type=int, nargs="+", default=[3000, 600], help="messages per run, one count per size"
    )
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10], help="concurrent sessions")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each scenario (medians reported)")
    parser.add_argument(
        "--daemon", action="store_true", help="also measure the whole daemon (intake running)"
    )
    parser.add_argument("--smtp-source", action="store_true", help="also drive each server with smtp-source")
    parser.add_argument("--pin", action="store_true", help="pin the servers to CPU 0 and the client to CPU 1")
    args = parser.parse_args()
    if len(args.messages) != len(args.sizes):
        parser.error("give one --messages count per --sizes entry")
    if args.smtp_source and shutil.which("smtp-source") is None:
        parser.error("smtp-source not found (Debian: apt-get install postfix, 'No configuration')")
    pin = args.pin and (os.cpu_count() or 1) > 1
    kinds = [k for k in SERVERS if k != "daemon" or args.daemon]
    print(
        f"# {machine()}; servers pinned to CPU {SERVER_CPU}, client to CPU {CLIENT_CPU}"
        if pin
        else f"# {machine()}; not pinned"
    )
    with tempfile.TemporaryDirectory(prefix="mailbot-bench-") as tmp:
        servers = {}
        for kind in kinds:
            (Path(tmp) / kind).mkdir()
            servers[kind] = Server(kind, Path(tmp) / kind, pin)
        if pin:
            os.sched_setaffinity(0, {CLIENT_CPU})
        try:
            measure(servers, args, kinds)
        finally:
            for server in servers.values():
                server.stop()


def measure(servers: dict[str, Server], args: argparse.Namespace, kinds: list[str]) -> None:
    """Every scenario `--rounds` times, the servers taking turns within each round (so a noisy neighbour on
    the machine hits them alike), then one line per server and scenario."""
    first = 0
    warm = Template(2000)
    for server in servers.values():  # first connections, imports, the database file: not timed
        asyncio.run(load(server.port, warm, 300, 2, first))
        server.settle()
        first += 300
    print(HEADER)
    for size, messages in zip(args.sizes, args.messages, strict=True):
        template = Template(size)
        for sessions in args.sessions:
            runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
            for _ in range(args.rounds):
                for kind in kinds:
                    runs[kind].append(scenario(servers[kind], template, messages, sessions, first))
                    first += messages
            null = combined(runs["null"])
            for kind in kinds:
                print_row(size, sessions, kind, combined(runs[kind]), null)
            if args.smtp_source:
                rates = {}
                for kind in kinds:
                    rates[kind] = smtp_source(servers[kind].port, size, messages, sessions).rate
                    servers[kind].settle()
                summary = ", ".join(f"{k} {rate:,.0f}/s" for k, rate in rates.items())
                print(
                    f"{size:>7} {sessions:>4}  smtp-source: {summary}, mailbot/null "
                    f"{rates['mailbot'] / rates['null']:.0%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

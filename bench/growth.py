"""What the intake and the sending cost as the database grows: the same work, round after round, on one
database that keeps everything the rounds before stored.

Each round stores --messages new customer questions (bench/corpus.py, each from one of --senders named
contacts, each with a Message-ID of its own), runs the intake until nothing is pending (Processor.run_once),
then drains the outbox and sweeps the deadlines, as bench/processing.py sets up (a frozen clock: every
round's mail falls in the loop governor's windows, as in a burst of mail). It prints each round's CPU per
message, then the statements whose time grew most from the first round to the last: a look-up whose cost
follows the size of a table, not of the batch, shows there (bench/RESULTS.md section 17). Statement times
are wall time around the driver's execute, the database server's share included.

    .venv/bin/python bench/growth.py [--databases sqlite postgresql] [--messages 3000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from corpus import SENDERS, SUPPORT, customer_message, register_senders, sender
from processing import database, drain, make_app
from sqlalchemy import event
from sqlalchemy.engine import Engine

from mailbot.app import App
from mailbot.store import inbound as inbound_store
from mailbot.store.inbound import RawMessage

STORE_BATCH = 25


class Statements:
    """Each statement's count and time on every engine of this process, until `take` starts them again."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)

    def _before(self, connection: Any, *_: Any) -> None:
        connection.info["began"] = time.perf_counter()

    def _after(self, connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        key = " ".join(statement.split())[:110]
        self.calls[key] += 1
        self.seconds[key] += time.perf_counter() - connection.info["began"]

    def take(self) -> tuple[Counter[str], Counter[str]]:
        taken = self.calls, self.seconds
        self.calls, self.seconds = Counter(), Counter()
        return taken


def one_round(app: App, first: int, messages: int) -> tuple[float, float]:
    """Store and decide `messages` new questions, then send what they queued: (intake, sending) CPU seconds."""
    for start in range(first, first + messages, STORE_BATCH):
        numbers = range(start, min(start + STORE_BATCH, first + messages))
        stored = [RawMessage(customer_message(n, 2000), "smtp", sender(n)[1], (SUPPORT,), "127.0.0.1") for n in numbers]
        app.db.call(inbound_store.insert_many, stored, app.clock.now())
    began = time.process_time()
    if drain(app) != messages:
        raise SystemExit("not every message was decided")
    decided = time.process_time()

    async def send() -> None:
        await app.sender.drain()
        await app.sla.sweep()

    asyncio.run(send())
    return decided - began, time.process_time() - decided


def measure(kind: str, args: argparse.Namespace, statements: Statements) -> None:
    with tempfile.TemporaryDirectory(prefix="mailbot-growth-") as tmp, database(kind, Path(tmp)) as url:
        app = make_app(url, Path(tmp))
        try:
            register_senders(app, SENDERS)
            statements.take()
            rounds = []
            for n in range(args.rounds):
                intake, sending = one_round(app, n * args.messages, args.messages)
                rounds.append(statements.take())
                seconds = rounds[-1][1]
                print(
                    f"{kind:<10} round {n + 1}: intake {intake / args.messages * 1e6:4.0f} µs CPU a message, sending "
                    f"{sending / args.messages * 1e6:4.0f}, statements {sum(seconds.values()) / args.messages * 1e6:4.0f}"
                    " µs a message",
                    flush=True,
                )
        finally:
            app.close()
    first, (last_calls, last) = rounds[0][1], rounds[-1]
    grown = sorted(last, key=lambda key: first.get(key, 0.0) - last[key])[: args.top]
    print(f"{kind}: the statements whose time grew most, round 1 -> round {args.rounds} (ms a round):")
    for key in grown:
        print(f"  {first.get(key, 0.0) * 1e3:7.1f} -> {last[key] * 1e3:7.1f}  ({last_calls[key]:>4}x)  {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--messages", type=int, default=3000, help="new questions a round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--top", type=int, default=6, help="statements listed")
    args = parser.parse_args()
    statements = Statements()
    for kind in args.databases:
        measure(kind, args, statements)


if __name__ == "__main__":
    main()

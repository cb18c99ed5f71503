"""The intake's CPU per message outside reading: the claim and the decide transaction (facts, rules, the
ticket, its messages, the confirmation planned, the batch's write, the outcomes), the way the runner does
them (Processor._claim, then Processor._decide on rows read beforehand), reading left out of the figure;
`apart`, the CPU spent composing the confirmation (Composer.compose) and in the loop governor
(Governor.limit), timed around those calls, and `rest`, the decide transaction without them.

Messages and setting as bench/processing.py (customer questions of about 2 KB, each from a named contact,
trusted local submission, so every one opens a ticket and owes a confirmation); SQLite in a temporary
folder or a private PostgreSQL database. CPU is this process's (time.process_time), not the database
server's.

    .venv/bin/python bench/deciding.py [--messages 1200] [--batch 8] [--database sqlite|postgresql]
                                       [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import SUPPORT, customer_message, register_senders, sender
from processing import count, database, make_app

from mailbot.compose import Composer
from mailbot.governor import Governor
from mailbot.store import inbound as inbound_store
from mailbot.store.inbound import RawMessage
from mailbot.store.schema import OutboxItem, Ticket

SENDERS = 1000
T = TypeVar("T")
APART = [0.0]  # CPU seconds in the calls timed apart


def timed_apart(cls: type, name: str) -> None:
    """Count the CPU of every call of `cls.name` in APART."""
    original = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begin = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            APART[0] += time.process_time() - begin

    setattr(cls, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=8, help="rows a batch (the worker's on SQLite: 8)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--profile", type=Path, help="write a cProfile (CPU time) of the claims and decisions")
    args = parser.parse_args()
    raws = [customer_message(n, 2000, SENDERS) for n in range(args.messages)]
    with tempfile.TemporaryDirectory(prefix="mailbot-bench-") as tmp, database(args.database, Path(tmp)) as url:
        app = make_app(url, Path(tmp))
        try:
            register_senders(app, SENDERS)
            processor = app.processor
            processor.batch = args.batch

            def store(first: int, last: int) -> None:
                for start in range(first, last, 25):
                    stored = [
                        RawMessage(raw, "smtp", sender(n, SENDERS)[1], (SUPPORT,), "127.0.0.1")
                        for n, raw in enumerate(raws[start : min(start + 25, last)], start=start)
                    ]
                    app.db.call(inbound_store.insert_many, stored, app.clock.now())

            store(0, args.batch)  # a batch to warm up (templates, the public suffix list), not counted
            first = app.db.call(processor._claim)
            warm = len(app.db.call(processor._decide, first, processor._read(first)))
            store(args.batch, len(raws))
            gc.collect()
            gc.freeze()  # as the daemon's workers do after their start (mailbot.workers)
            profiler = cProfile.Profile(time.process_time) if args.profile else None

            def timed(work: Callable[[], T]) -> tuple[T, float]:
                begin = time.process_time()
                if profiler:
                    profiler.enable()
                result = work()
                if profiler:
                    profiler.disable()
                return result, time.process_time() - begin

            timed_apart(Composer, "compose")
            timed_apart(Governor, "limit")
            APART[0] = claim = decide = 0.0
            decided = 0
            while True:
                rows, spent = timed(lambda: app.db.call(processor._claim))
                claim += spent
                if not rows:
                    break
                readings = processor._read(rows)  # not counted
                outcomes, spent = timed(lambda: app.db.call(processor._decide, rows, readings))  # noqa: B023
                decide, decided = decide + spent, decided + len(outcomes)
            if profiler and args.profile:
                profiler.dump_stats(args.profile)
            if not count(app, Ticket, status="new") == count(app, OutboxItem, kind="confirmation") == decided + warm == len(raws):
                raise SystemExit("not every message became a ticket with its confirmation queued")
            print(
                f"{args.database} batch {args.batch}: claim {claim / decided * 1e6:.0f} decide "
                f"{decide / decided * 1e6:.0f} total {(claim + decide) / decided * 1e6:.0f} (apart "
                f"{APART[0] / decided * 1e6:.0f}, rest {(claim + decide - APART[0]) / decided * 1e6:.0f}) µs CPU a message"
            )
        finally:
            app.close()


if __name__ == "__main__":
    main()

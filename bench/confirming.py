"""What planning a new ticket's confirmation costs in CPU, one tree against another, in turns.

`Workflow.start_clock` is all of it: the ticket's deadlines, the confirmation composed (`to_requester`:
the requester's name and address, the templates' context, the thread, the reply address, `compose`),
passed by the loop governor and queued (`send`, `queue`: its conversation message and outbox row, the
batch's facts told), and the sweep armed for the ticket's first SLA instant (`_arm`). It is timed as the
intake runs it: each tree's `Processor.run_once` drains --messages stored customer questions (corpus:
--size bytes from named contacts, submitted over SMTP from 127.0.0.1 with trust_local_submission, so each
is entitled and owed a confirmation) on SQLite, with `start_clock` wrapped to add up the thread's CPU
(time.thread_time) spent inside it, and the sweep's wake-up set as the daemon sets it.

Two figures, CPU µs a message, the best of --repeats passes (each pass new messages, so nothing is a
duplicate) in a fresh process per tree:

  start_clock   inside `Workflow.start_clock`
  intake        the whole `run_once` (claim, read, decide, write), for scale

The trees take turns, --rounds times; medians are shown with the ratio to the first tree.

    .venv/bin/python bench/confirming.py --trees /tmp/base . [--messages 1000] [--rounds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trees import run_tree, tree_app

FIGURES = ("start_clock", "intake")


def measure(code: Path, messages: int, size: int, repeats: int) -> dict[str, float]:
    """The figures of the tree at `code` (run in a process of its own: its mailbot is imported)."""
    app = tree_app(code, "bench-confirming-")
    from corpus import SUPPORT, customer_message, register_senders, sender

    from mailbot.store import inbound as inbound_store
    from mailbot.store.inbound import RawMessage
    from mailbot.workflow import Workflow

    register_senders(app)
    app.workflow.deadlines = lambda at: None  # as the daemon's runner sets it: _arm does its work
    inside = [0.0]
    start_clock = Workflow.start_clock

    def timed(*args: Any, **kwargs: Any) -> None:
        started = time.thread_time()
        try:
            start_clock(*args, **kwargs)
        finally:
            inside[0] += time.thread_time() - started

    Workflow.start_clock = timed  # type: ignore[method-assign]
    first = [0]

    def one_pass(count: int) -> tuple[float, float]:
        """Store `count` new questions, drain them; CPU µs a message inside start_clock and in all."""
        numbers = range(first[0], first[0] + count)
        first[0] += count
        rows = [RawMessage(customer_message(n, size), "smtp", sender(n)[1], (SUPPORT,), "127.0.0.1") for n in numbers]
        for at in range(0, count, 100):
            app.db.call(inbound_store.insert_many, rows[at : at + 100], app.clock.now())
        inside[0], done = 0.0, 0
        started = time.thread_time()
        while outcomes := app.processor.run_once():
            done += sum(outcome.action == "created" for outcome in outcomes)
        spent = time.thread_time() - started
        assert done == count, (done, count)
        return inside[0] / count * 1e6, spent / count * 1e6

    one_pass(100)  # warm: imports, compiled templates and patterns
    passes = [one_pass(messages) for _ in range(repeats)]
    app.close()
    return {"start_clock": min(p[0] for p in passes), "intake": min(p[1] for p in passes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path(".")])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.messages, args.size, args.repeats)))
        return
    results: dict[Path, list[dict[str, float]]] = {tree: [] for tree in args.trees}
    width = max(len(str(tree)) for tree in args.trees)
    print(f"round  {'tree':<{width}}  " + "  ".join(f"{f:>12}" for f in FIGURES) + "   (CPU µs a message)")
    for round_ in range(1, args.rounds + 1):
        for tree in args.trees:
            figures = run_tree(__file__, tree, args)
            results[tree].append(figures)
            print(f"{round_:>5}  {tree!s:<{width}}  " + "  ".join(f"{figures[f]:>12.0f}" for f in FIGURES), flush=True)
    base = args.trees[0]
    median: Callable[[Path, str], float] = lambda tree, f: statistics.median(r[f] for r in results[tree])
    for tree in args.trees[1:]:
        print(f"medians, {tree} against {base}: " + ", ".join(
            f"{f} {median(base, f):.0f} -> {median(tree, f):.0f} ({median(tree, f) / median(base, f):.2f})"
            for f in FIGURES
        ))


if __name__ == "__main__":
    main()

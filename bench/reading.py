"""What reading a stored message and composing its confirmation cost in CPU, one tree against another.

Each measurement runs in a fresh process on the code of the tree it is given (`--trees`; the first is the
baseline), on the same messages: the benchmarks' customer questions (corpus.customer_message, --size
bytes, from named contacts, submitted over SMTP from 127.0.0.1 with trust_local_submission) and the
real-world mail of this tree's tests (tests/data/*.eml and tests/realworld.py's cases: charsets, HTML only,
broken MIME, bounces, auto-replies, winmail.dat...). Three figures, in CPU µs a message
(time.process_time, the best of --repeats passes, so that other work on the machine counts least):

  read bench    the intake's reading (`Intake.read`: parse, sender authentication, automatic-mail, bounce
                and loop verdicts, thread clues, identity) of --messages customer questions
  read real     the same over the real-world set, each message as often as it takes to make --messages
  compose       `Composer.compose` of a confirmation (text and HTML parts, threading headers, loop mark)

The trees take turns, --rounds times; medians are shown with the ratio to the first tree. No database
work is measured (a SQLite file holds the secret the loop marks are made with). The real-world set is
small, so its messages come round again: values remembered across messages (parsed header fields,
mailboxes, charsets) are found more often than in a day's real mail.

    .venv/bin/python bench/reading.py --trees /tmp/base . [--messages 2000] [--rounds 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TUESDAY_10_ET = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
FIGURES = ("read bench", "read real", "compose")


def real_world() -> list[bytes]:
    """This tree's real-world test mail: the files of tests/data and the cases of tests/realworld.py."""
    sys.path.insert(0, str(HERE.parent))
    from tests.realworld import CASES

    return [path.read_bytes() for path in sorted((HERE.parent / "tests" / "data").glob("*.eml"))] + [
        case.raw for case in CASES
    ]


def best(work: Callable[[], None], count: int, repeats: int) -> float:
    """CPU µs per item of the cheapest of `repeats` passes of `work` over `count` items."""
    passes = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        passes.append(time.process_time() - started)
    return min(passes) / count * 1e6


def measure(code: Path, messages: int, size: int, repeats: int) -> dict[str, float]:
    """The figures of the tree at `code` (run in a process of its own: its mailbot is imported)."""
    real = real_world()  # read before `code` comes first on the path: the same set for every tree
    sys.path[:0] = [str(code), str(HERE)]
    import mailbot

    assert Path(mailbot.__file__).resolve().is_relative_to(code.resolve()), mailbot.__file__
    from corpus import customer_message, sender
    from instance import settings

    from mailbot.app import App
    from mailbot.clock import FrozenClock
    from mailbot.compose import Thread, ticket_reference, ticket_subject
    from mailbot.config import from_mapping
    from mailbot.store.schema import InboundMessage

    def inbound(raw: bytes, envelope_from: str) -> InboundMessage:
        return InboundMessage(
            raw=raw,
            envelope_from=envelope_from,
            envelope_to=["herosupport@schoolmint.com"],
            received_at=TUESDAY_10_ET,
            source="smtp",
            peer="127.0.0.1",
            size=len(raw),
        )

    work = Path(tempfile.mkdtemp(prefix="bench-reading-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    app = App(from_mapping(settings(f"sqlite:///{work}/mailbot.db", work / "sent"), "bench"), FrozenClock(TUESDAY_10_ET))
    app.db.upgrade()
    intake, composer, facts = app.intake, app.composer, app.workflow.facts
    questions = [inbound(customer_message(n, size), sender(n)[1]) for n in range(messages)]
    mail = [inbound(real[n % len(real)], "someone@example.org") for n in range(messages)]
    from email.headerregistry import Address

    def read(rows: list[InboundMessage]) -> Callable[[], None]:
        return lambda: [intake.read(row) for row in rows] and None

    def compose() -> None:
        for n in range(messages):
            name, address = sender(n)
            subject = f"Teachers cannot log in to the portal (case {n % 1000})"
            composer.compose(
                "confirmation",
                to=[Address(name, *address.split("@"))],
                subject=ticket_subject(n, subject),
                thread=Thread.continuing([f"<{n:010d}.bench@example>"], f"<{n:010d}.bench@example>", topic=subject),
                context={
                    **facts,
                    "ticket_id": n,
                    "reference": ticket_reference(n),
                    "subject": subject,
                    "requester": address,
                    "requester_name": name,
                    "introduction_due": "Tuesday, December 1, 2:00 PM EST",
                },
            )

    read(questions[:50])()  # warm: imports, caches of compiled templates and patterns
    compose()
    return {
        "read bench": best(read(questions), messages, repeats),
        "read real": best(read(mail), messages, repeats),
        "compose": best(compose, messages, repeats),
    }


def run_one(code: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--one", str(code), "--messages", str(args.messages)]
    command += ["--size", str(args.size), "--repeats", str(args.repeats)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path(".")])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.messages, args.size, args.repeats)))
        return
    results: dict[Path, list[dict[str, float]]] = {tree: [] for tree in args.trees}
    print(f"{args.messages} messages, {args.rounds} rounds, the best of {args.repeats} passes each; CPU µs a message")
    print(f"{'round':>5}  {'tree':30}" + "".join(f"{name:>12}" for name in FIGURES))
    for round_number in range(1, args.rounds + 1):
        for tree in args.trees:
            figures = run_one(tree, args)
            results[tree].append(figures)
            print(f"{round_number:>5}  {tree!s:30}" + "".join(f"{figures[name]:>12.0f}" for name in FIGURES))
    print("medians, and the ratio to the first tree:")
    base = {name: statistics.median(r[name] for r in results[args.trees[0]]) for name in FIGURES}
    for tree in args.trees:
        medians: dict[str, Any] = {name: statistics.median(r[name] for r in results[tree]) for name in FIGURES}
        print(
            f"{'':>5}  {tree!s:30}"
            + "".join(f"{medians[name]:>7.0f} {medians[name] / base[name]:4.2f}" for name in FIGURES)
        )


if __name__ == "__main__":
    main()

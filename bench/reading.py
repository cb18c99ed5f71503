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

`--digest` times nothing: it checks that the trees read alike. Each tree reads the same varied messages
(`varied`: the real-world set, bench questions, header and MIME variants of a question, and seeded byte
mutations of all of them) and records, per message, every parsed field, defect note and part of the
standard library's message, and every verdict of `Intake.read` (under several envelopes) and of
mailbot.automatic; the trees' records must be equal, message by message.

    .venv/bin/python bench/reading.py --trees /tmp/base . [--messages 2000] [--rounds 3] [--repeats 5]
    .venv/bin/python bench/reading.py --trees /tmp/base . --digest
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trees import TUESDAY_10_ET, run_tree, tree_app

HERE = Path(__file__).resolve().parent
FIGURES = ("read bench", "read real", "compose")


def real_world() -> list[bytes]:
    """This tree's real-world test mail: the files of tests/data and the cases of tests/realworld.py."""
    sys.path.insert(0, str(HERE.parent))
    from tests.realworld import CASES

    return [path.read_bytes() for path in sorted((HERE.parent / "tests" / "data").glob("*.eml"))] + [
        case.raw for case in CASES
    ]


# Header fields put into a question in turn (`varied`): Content-* forms, address forms, broken lines.
_FIELD_VARIANTS: tuple[bytes, ...] = (
    b"Content-Type: text/plain",
    b"Content-Type: TEXT/PLAIN; charset=\"ISO-8859-1\"",
    b"Content-Type: text/plain; charset=utf-8 (a comment)",
    b"Content-Type: text/plain; format=flowed; delsp=yes",
    b"Content-Type: text/plain; name=\"notes.txt\"",
    b"Content-Type: text/plain; charset*=utf-8''%E2%82%AC",
    b"Content-Type: text/plain; charset=\"=?utf-8?q?x?=\"",
    b"Content-Type: text/html; charset=utf-8",
    b"Content-Type: text/plain;\r\n charset=windows-1252",
    b"Content-Type: multipart/mixed; boundary=none-here",
    b"Content-Type: multipart/mixed",
    b"Content-Type: message/rfc822",
    b"Content-Type: message/delivery-status",
    b"Content-Type: application/pdf",
    b"Content-Type: text/plain; charset=shift_jis",
    b"Content-Type: ; charset=utf-8",
    b"Content-Type: text/plain\r\nContent-Type: text/html",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Transfer-Encoding: x-uuencode",
    b"Content-Disposition: attachment; filename=\"q.txt\"",
    b"Content-Disposition: inline",
    b"MIME-Version: 1.0 (produced by a test)",
    b"From: ana@lincoln.example (Ana Diaz)",
    b"From: \"Diaz, Ana\" <ana@lincoln.example>",
    b"From: =?utf-8?q?Ana_D=C3=ADaz?= <ana@lincoln.example>",
    b"From: Ana <ana@lincoln.example>, Bo <bo@lincoln.example>",
    b"From: <alice@x.example>@evil.example",
    b"From: MAILER-DAEMON",
    b"Sender: noreply@lincoln.example",
    b"Reply-To: list@lincoln.example",
    b"To: undisclosed-recipients:;",
    b"Cc: a@x.example, \"B, b\" <b@x.example>, broken@",
    b"Subject: =?iso-2022-jp?B?GyRCJEgbKEI=?= and more",
    b"Subject: caf\xc3\xa9 \xe9t\xe9",
    b"Subject: folded\r\n\tover two lines",
    b"Subject : spaced before the colon",
    b"a stray line without a colon",
    b" a continuation",
    b":no name",
    b"From somebody@example.org Tue Dec  1 10:00:00 2026",
    b"Date: yesterday",
    b"Date: Tue, 01 Dec 2026 10:00:00",
    b"In-Reply-To: <a@x> <b@x>",
    b"References: a@x, <b@x>\r\n <c@x>",
    b"Message-ID: not-an-id",
    b"Auto-Submitted: auto-replied (vacation)",
    b"Precedence: bulk",
    b"List-Id: <list.example>",
    b"X-Auto-Response-Suppress: DR, OOF",
    b"X-Mailbot-Loop: 0123456789abcdef0123456789abcdef",
    b"Return-Path: <MAILER-DAEMON>",
    b"Authentication-Results: mx.example; dkim=pass header.d=lincoln.example",
    b"X-Long: " + b"x" * 3000,
    b"X-Comments: " + b"(" * 40 + b")" * 40,
)


def varied(real: list[bytes], questions: list[bytes]) -> list[bytes]:
    """The messages `--digest` reads: `real` and `questions`, each question with each field variant put
    first, last and in place of its own field of that name, a few structural variants, and seeded byte
    mutations (a byte changed, inserted or dropped) of every message."""
    question = questions[0]
    head, _, body = question.partition(b"\r\n\r\n")
    found: list[bytes] = [*real, *questions]
    for field in _FIELD_VARIANTS:
        name = field.partition(b":")[0].lower() + b":"
        own = [line for line in head.split(b"\r\n") if not line.lower().startswith(name)]
        found += [
            field + b"\r\n" + question,
            head + b"\r\n" + field + b"\r\n\r\n" + body,
            b"\r\n".join([*own, field]) + b"\r\n\r\n" + body,
        ]
    found += [
        question.replace(b"\r\n", b"\n"),
        question.replace(b"\r\n", b"\r"),
        head + b"\r\n",
        head,
        head + b"\r\n\r\n",
        b"\r\n" + question,
        head + b"\r\nX-Empty:\r\n\r\n" + body,
        head + b"\r\n\r\n\r\n" + body,
        head + b"\r\nbody without a blank line\r\n" + body,
        question + b"\x00\xff\xfe",
        question.replace(b"the school office", "l'\u00e9cole".encode()),
        question.replace(b"Hello", b"\x1b$B$3$s$K$A$O\x1b(B"),
    ]
    rng = random.Random(13)
    for message in list(found):
        for _ in range(3):
            data = bytearray(message)
            at = rng.randrange(len(data) + 1)
            kind = rng.randrange(3)
            byte = rng.choice(b"\r\n \t:;=?\"<>()@,-\x80\xffaZ0")
            if kind == 0 and at < len(data):
                data[at] = byte
            elif kind == 1:
                data.insert(at, byte)
            elif at < len(data):
                del data[at]
            found.append(bytes(data))
    return found


def records(code: Path, size: int) -> list[str]:
    """What the tree at `code` reads in each of `varied`'s messages, one JSON text a message."""
    real = real_world()
    app = tree_app(code, "bench-reading-")
    from corpus import customer_message, sender

    from mailbot.automatic import automatic_reason, is_own_mail, may_auto_reply_to
    from mailbot.salvage import read
    from mailbot.store.schema import InboundMessage


    class NoRecords:  # no DNS leaves the machine: every DKIM key is missing
        def txt(self, name: str) -> list[bytes]:
            return []

    app.intake.gate.resolver = NoRecords()
    questions = [customer_message(n, size) for n in range(20)]
    envelopes = [(sender(0)[1], "smtp", "127.0.0.1"), ("", "smtp", "127.0.0.1"), ("someone@example.org", "imap", "")]

    def entity(part: Any) -> dict[str, Any]:
        payload = part.get_payload()
        return {
            "fields": list(part.raw_items()),
            "type": [part.get_content_type(), part.get_default_type(), part.get_unixfrom()],
            "defects": [repr(d) for d in part.defects],
            "payload": [entity(p) for p in payload] if isinstance(payload, list) else payload,
            "preamble": [part.preamble, part.epilogue],
        }

    def record(raw: bytes) -> dict[str, Any]:
        parsed = read(raw)
        message = parsed.message
        readings = []
        for envelope_from, source, peer in envelopes:
            row = InboundMessage(
                raw=raw,
                envelope_from=envelope_from,
                envelope_to=["herosupport@schoolmint.com"],
                received_at=TUESDAY_10_ET,
                source=source,
                peer=peer,
                size=len(raw),
            )
            reading = app.intake.read(row)
            steps = [(step.step, step.verdict, step.detail) for step in reading.steps]  # not their times
            fields = {name: repr(value) for name, value in vars(reading).items() if name not in ("parsed", "steps")}
            readings.append({**fields, "steps": steps})
        return {
            "json": parsed.to_json(),
            "fields": repr(parsed),
            "message": entity(message),
            "verdicts": [
                [automatic_reason(message, e), may_auto_reply_to(message, e)] for e in (None, "", "<>", "x@lincoln.example")
            ],
            "own": is_own_mail(message, "0123456789abcdef0123456789abcdef"),
            "readings": readings,
        }

    return [json.dumps(record(raw), sort_keys=True, default=repr) for raw in varied(real, questions)]


def compare(args: argparse.Namespace) -> None:
    """Each tree's records of `varied`'s messages, against the first tree's."""
    texts = {}
    for tree in args.trees:
        command = [sys.executable, __file__, "--one", str(tree), "--size", str(args.size), "--digest"]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        texts[tree] = json.loads(done.stdout.strip().splitlines()[-1])
        digest = hashlib.sha256("\n".join(texts[tree]).encode()).hexdigest()[:16]
        print(f"{tree!s:30} {len(texts[tree])} messages, digest {digest}")
    base = texts[args.trees[0]]
    for tree in args.trees[1:]:
        differ = [n for n, (a, b) in enumerate(zip(base, texts[tree], strict=True)) if a != b]
        print(f"{tree!s:30} differs from {args.trees[0]} on {len(differ)} messages {differ[:20]}")
        if differ:
            sys.exit(1)


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
    app = tree_app(code, "bench-reading-")
    from corpus import customer_message, sender

    from mailbot.compose import Thread, ticket_reference, ticket_subject
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path(".")])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--digest", action="store_true", help="compare what the trees read; time nothing")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        found = records(args.one, args.size) if args.digest else measure(args.one, args.messages, args.size, args.repeats)
        print(json.dumps(found))
        return
    if args.digest:
        compare(args)
        return
    results: dict[Path, list[dict[str, float]]] = {tree: [] for tree in args.trees}
    print(f"{args.messages} messages, {args.rounds} rounds, the best of {args.repeats} passes each; CPU µs a message")
    print(f"{'round':>5}  {'tree':30}" + "".join(f"{name:>12}" for name in FIGURES))
    for round_number in range(1, args.rounds + 1):
        for tree in args.trees:
            figures = run_tree(__file__, tree, args)
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

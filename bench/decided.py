"""Whether trees decide alike: a digest of everything each tree's intake stores and composes for the same
varied messages, to check that a change made for speed changed no byte.

Each tree runs in a fresh process on its own code (bench/trees.py), with the site's secret, the Message-IDs
and the MIME boundaries pinned (secrets.token_hex and token_urlsafe), and drains, in stored batches of 50
through `Processor.run_once`, --messages questions (corpus.customer_message) from 60 senders of whom 40 are
named contacts: new tickets with their confirmations, strangers' held tickets with their explanations (and
the explanation limit), replies threading onto tickets, automatic mail held, duplicates, a 9 KB message in
seven. The rows of tickets, ticket_messages, attachments, outbox (bodies included), inbound_messages (the
decision trails without their timings, the claimer without its pid) and contacts are digested, in id order.

    .venv/bin/python bench/decided.py --trees /tmp/base . [--messages 600]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from trees import tree_app

TABLES = ("tickets", "ticket_messages", "attachments", "outbox", "inbound_messages", "contacts")
SENDERS, CONTACTS = 60, 40


def corpus(count: int) -> list[tuple[bytes, str]]:
    """(raw message, envelope sender) for each of `count` messages: see the module docstring."""
    from corpus import customer_message, sender

    messages: list[tuple[bytes, str]] = []
    for n in range(count):
        address = sender(n, SENDERS)[1]
        raw = customer_message(n, 2000 if n % 7 else 9000, SENDERS)
        if n % 11 == 5:  # a reply to this sender's earlier message (none before the first round of senders)
            earlier = f"<{n - SENDERS:010d}.bench@{address.rpartition('@')[2]}>" if n >= SENDERS else "<none@x>"
            raw = raw.replace(b"Subject: ", f"In-Reply-To: {earlier}\r\nSubject: Re: ".encode(), 1)
        if n % 13 == 3:
            raw = raw.replace(b"Subject: ", b"Auto-Submitted: auto-replied\r\nSubject: ", 1)
        if n % 17 == 4 and messages:
            raw, address = messages[-1]  # the message before, again
        messages.append((raw, address))
    return messages


def scrubbed(row: dict[str, Any]) -> dict[str, Any]:
    """A row without what differs from run to run: each trail step's time, the claimer's pid."""
    row.pop("claimed_by", None)
    if row.get("trail"):
        row["trail"] = [{k: v for k, v in step.items() if k != "ms"} for step in json.loads(row["trail"])]
    return row


def measure(code: Path, messages: int) -> dict[str, Any]:
    """The digest of the tree at `code` (run in a process of its own: its mailbot is imported)."""
    logging.disable(logging.CRITICAL)  # the governor's limits are logged: expected here
    counter = itertools.count()
    secrets.token_urlsafe = lambda nbytes=None: f"pinned{next(counter):08d}"  # type: ignore[assignment]
    secrets.token_hex = lambda nbytes=None: "ab" * 32  # type: ignore[assignment]
    app = tree_app(code, "bench-decided-")
    import sqlalchemy as sa
    from corpus import SUPPORT, register_senders

    from mailbot.store import inbound as inbound_store
    from mailbot.store.inbound import RawMessage

    register_senders(app, CONTACTS)
    stored = corpus(messages)
    for at in range(0, len(stored), 50):
        rows = [RawMessage(raw, "smtp", address, (SUPPORT,), "127.0.0.1") for raw, address in stored[at : at + 50]]
        app.db.call(inbound_store.insert_many, rows, app.clock.now())
        while app.processor.run_once():
            pass
    digest, counts = hashlib.sha256(), {}
    with app.db.engine.connect() as connection:
        for table in TABLES:
            names = [column["name"] for column in sa.inspect(connection).get_columns(table)]
            rows = connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY id")).all()
            counts[table] = len(rows)
            for row in rows:
                digest.update(repr((table, scrubbed(dict(zip(names, row, strict=True))))).encode())
        actions = dict(connection.execute(sa.text("SELECT action, count(*) FROM inbound_messages GROUP BY action")).all())
    app.close()
    return {"digest": digest.hexdigest()[:16], "rows": counts, "actions": actions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path(".")])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.messages)))
        return
    found = {}
    for tree in args.trees:
        command = [sys.executable, __file__, "--one", str(tree), "--messages", str(args.messages)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        found[tree] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{tree}: {json.dumps(found[tree])}")
    alike = len({json.dumps(result, sort_keys=True) for result in found.values()}) == 1
    print("the trees decide alike" if alike else "THE TREES DIFFER")
    if not alike:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

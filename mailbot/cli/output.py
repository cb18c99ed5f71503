"""How commands print: a table with a header row, or one JSON document, never both on stdout."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from typing import Any


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of prose")


def dump(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def report(args: argparse.Namespace, data: Any, prose: str) -> None:
    """What a changing command did: `data` as JSON with --json, else the sentence; and the sentence in the
    system log (mailbot.cli.audit), first, so a reader gone away cannot keep a done change out of it."""
    from mailbot.cli import audit

    audit.record(args, prose)
    if getattr(args, "json", False):
        dump(data)
    else:
        print(prose)


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Rows under a header row, each column as wide as its widest cell; the last column is left ragged."""
    cells = [[str(column) for column in columns]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns) - 1)]
    for row in cells:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip())

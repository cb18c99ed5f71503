"""One tree's mailbot in this process, for the benchmarks that compare trees in turns (reading, confirming):
each measures a tree in a fresh process, which imports that tree's mailbot, not the one installed."""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TUESDAY_10_ET = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


def tree_app(code: Path, prefix: str) -> Any:
    """An App of the tree at `code` (SQLite in a temporary folder, upgraded, its clock pinned to a Tuesday
    10:00 ET), that tree's mailbot first on the path for every import that follows."""
    sys.path[:0] = [str(code), str(HERE)]
    import mailbot

    assert Path(mailbot.__file__).resolve().is_relative_to(code.resolve()), mailbot.__file__
    from instance import settings

    from mailbot.app import App
    from mailbot.clock import FrozenClock
    from mailbot.config import from_mapping

    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    app = App(from_mapping(settings(f"sqlite:///{work}/mailbot.db", work / "sent"), "bench"), FrozenClock(TUESDAY_10_ET))
    app.db.upgrade()
    return app


def run_tree(script: str, code: Path, args: argparse.Namespace) -> dict[str, float]:
    """`script --one code` (its --messages, --size, --repeats) in a fresh process: the figures it prints last,
    as JSON."""
    command = [sys.executable, script, "--one", str(code), "--messages", str(args.messages)]
    command += ["--size", str(args.size), "--repeats", str(args.repeats)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))

"""How long the `mailbot` command takes to start, against a bare `python -c pass` in the same run.

Each command runs --runs times in turn (so a busy machine slows them alike); the median and the fastest
wall-clock times are reported, and each command's time above the bare interpreter's. Commands:
  python -c pass           the interpreter alone (the floor)
  mailbot --help           argument parsing only: no configuration, no database
  mailbot --version        the same, plus the package metadata
  mailbot ticket list      a reading command on an empty SQLite database (SQLAlchemy, the configuration)

    .venv/bin/python bench/startup.py [--runs 20]

Where the time goes: `.venv/bin/python -X importtime -m mailbot --help 2>&1 | sort -t'|' -k2 -n | tail`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    mailbot = str(Path(sys.executable).parent / "mailbot")
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text(f'[database]\nurl = "sqlite:///{folder}/mailbot.db"\n')
        subprocess.run([mailbot, "--config", str(config), "db", "upgrade"], capture_output=True, check=True)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "mailbot --help": [mailbot, "--help"],
            "mailbot --version": [mailbot, "--version"],
            "mailbot ticket list": [mailbot, "--config", str(config), "ticket", "list"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name].append(timed(command))
    floor = statistics.median(times["python -c pass"])
    print(f"{'command':<22} {'median ms':>10} {'fastest ms':>11} {'above python':>13}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<22} {median * 1000:>10.0f} {min(samples) * 1000:>11.0f} {(median - floor) * 1000:>12.0f}")


if __name__ == "__main__":
    main()

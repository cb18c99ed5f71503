"""`mailbot [--config PATH] COMMAND ...`: the commands of INTERFACE.md. No business logic lives here.

Exit status: 0 success; 1 a refused request (one line on stderr); 2 a usage error; 75 (EX_TEMPFAIL) when a
message could not be stored, so an MTA piping into `mailbot ingest` retries. No traceback reaches a user
for bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from mailbot import config as config_module
from mailbot.cli.terminal import safe_output
from mailbot.config import Config
from mailbot.errors import ConfigError, MailbotError, RefusedError, TransientError

if TYPE_CHECKING:
    from mailbot.app import App

EX_TEMPFAIL = 75
# Whatever mailbot creates (the SQLite database and its journal, the sent maildir, kept mail) is its own:
# the database holds raw mail and the site's secret. (Stricter than the unit's UMask=0027: nothing mailbot
# writes is for its group either.)
PRIVATE_UMASK = 0o077
Handler = Callable[[argparse.Namespace, "Context"], int]


class Context:
    """What a command needs, built lazily: `parse` must work without a configuration or a database."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    @cached_property
    def config(self) -> Config:
        return config_module.load(self.config_path)

    @cached_property
    def app(self) -> App:
        from mailbot.app import App  # heavy (SQLAlchemy, templates): only for commands that need it

        return App(self.config)

    def close(self) -> None:
        if "app" in self.__dict__:
            self.app.close()


def build_parser() -> argparse.ArgumentParser:
    from mailbot.cli import hours, mail, registry, service, tickets

    parser = argparse.ArgumentParser(prog="mailbot", description="Email-to-ticket daemon for the support address.")
    parser.add_argument("--config", metavar="PATH", help="configuration file (default: $MAILBOT_CONFIG or ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (service, mail, tickets, registry, hours):
        module.register(commands)
    return parser


def setup_logging(verbose: bool) -> None:
    # Under systemd the journal adds its own timestamps; on a terminal we add ours.
    journal = "JOURNAL_STREAM" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)
    for noisy in ("mail.log", "apscheduler", "aioimaplib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 1) -> int:
    print(f"mailbot: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command with a private umask and terminal-safe output (mailbot.cli.terminal)."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        with safe_output():
            return _run(argv)
    finally:
        os.umask(previous)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    context = Context(args.config)
    handler: Handler = args.handler
    try:
        return handler(args, context)
    except (ConfigError, RefusedError) as exc:
        return fail(str(exc))
    except TransientError as exc:
        return fail(f"temporary failure: {exc}", EX_TEMPFAIL)
    except MailbotError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    finally:
        context.close()


if __name__ == "__main__":
    sys.exit(main())

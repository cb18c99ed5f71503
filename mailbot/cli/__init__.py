"""`mailbot [--config PATH] COMMAND ...`: the commands of INTERFACE.md. No business logic lives here.

Exit status: 0 success; 1 a refused request (one line on stderr); 2 a usage error; 75 (EX_TEMPFAIL) when a
message could not be stored, so an MTA piping into `mailbot ingest` retries. No traceback reaches a user
for bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from mailbot import config as config_module
from mailbot.config import Config
from mailbot.errors import ConfigError, MailbotError, RefusedError, TransientError

if TYPE_CHECKING:
    from mailbot.app import App
    from mailbot.clock import Clock

EX_TEMPFAIL = 75
Handler = Callable[[argparse.Namespace, "Context"], int]


class Context:
    """What a command needs, built lazily: `parse` must work without a configuration or a database."""

    def __init__(self, config_path: str | None, clock: Clock | None = None) -> None:
        self.config_path = config_path
        self.clock = clock  # None: the system clock; tests pin the instant

    @cached_property
    def config(self) -> Config:
        return config_module.load(self.config_path)

    @cached_property
    def app(self) -> App:
        from mailbot.app import App  # heavy (SQLAlchemy, templates): only for commands that need it

        return App(self.config, self.clock)

    def close(self) -> None:
        if "app" in self.__dict__:
            self.app.close()


def build_parser() -> argparse.ArgumentParser:
    from mailbot.cli import hours, mail, ops, registry, service, tickets

    parser = argparse.ArgumentParser(prog="mailbot", description="Email-to-ticket daemon for the support address.")
    parser.add_argument("--config", metavar="PATH", help="configuration file (default: $MAILBOT_CONFIG or ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (service, mail, tickets, registry, hours, ops):
        module.register(commands)
    return parser


def setup_logging(verbose: bool) -> None:
    from mailbot import logs  # text, journald priorities or JSON lines (MAILBOT_LOG_FORMAT)

    logs.setup(verbose)


def fail(message: str, code: int = 1) -> int:
    print(f"mailbot: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    context = Context(args.config, clock)
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

"""`mailbot [--config PATH] COMMAND ...`: the commands of INTERFACE.md. No business logic lives here.

Exit status: 0 success; 1 a refused request or a setup that cannot work (one line on stderr); 2 a usage
error; 3 `inbound retry` whose message failed again; 75 (EX_TEMPFAIL) when something temporary failed
(the database is unreachable or locked), so an MTA piping into `mailbot ingest` retries. No traceback
reaches a user for bad input.

Start-up time: `--help` must not wait for SQLAlchemy, pydantic or the mail libraries. The command modules
import only the standard library at the top; each handler imports what it needs when it runs, and the
configuration is read only by a command that asks for it (tests/test_cli_startup.py checks this).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mailbot.cli.terminal import safe_output
from mailbot.errors import ConfigError, MailbotError, RefusedError, TransientError

if TYPE_CHECKING:
    from mailbot.app import App
    from mailbot.clock import Clock
    from mailbot.config import Config

EX_TEMPFAIL = 75
EX_SIGPIPE = 128 + 13  # what a shell reports for a Unix tool stopped by a closed pipe (SIGPIPE)
# Whatever mailbot creates (the SQLite database and its journal, the sent maildir, kept mail) is its own:
# the database holds raw mail and the site's secret. (Stricter than the unit's UMask=0027: nothing mailbot
# writes is for its group either.)
PRIVATE_UMASK = 0o077
Handler = Callable[[argparse.Namespace, "Context"], int]


class Context:
    """What a command needs, built lazily: `parse` must work without a configuration or a database."""

    def __init__(self, config_path: str | None, clock: Clock | None = None) -> None:
        self.config_path = config_path
        self.clock = clock  # None: the system clock; tests pin the instant

    @cached_property
    def config(self) -> Config:
        from mailbot import config  # pydantic: only for commands that read the configuration

        return config.load(self.config_path)

    @cached_property
    def app(self) -> App:
        from mailbot.app import App  # heavy (SQLAlchemy, templates): only for commands that need it

        return App(self.config, self.clock)

    def close(self) -> None:
        if "app" in self.__dict__:
            self.app.close()


class VersionAction(argparse.Action):
    """`--version`: the package's own constant, so it loads nothing (importlib.metadata loads `email`)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from mailbot import __version__

        try:
            print(f"mailbot {__version__}", flush=True)
        except BrokenPipeError:
            quiet_stdout()
            parser.exit(EX_SIGPIPE)
        parser.exit()


def group(commands: Any, name: str, help: str) -> Any:
    """The subcommands of `mailbot NAME ...`, made by whichever module asks first: several modules may add
    commands to one group (`inbound failed` here, `inbound show` there)."""
    parser = commands.choices.get(name) or commands.add_parser(name, help=help)
    if not hasattr(parser, "mailbot_commands"):
        parser.mailbot_commands = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    return parser.mailbot_commands


def build_parser() -> argparse.ArgumentParser:
    from mailbot.cli import hours, inbound, mail, ops, registry, service, tickets

    parser = argparse.ArgumentParser(prog="mailbot", description="Email-to-ticket daemon for the support address.")
    parser.add_argument("--config", metavar="PATH", help="configuration file (default: $MAILBOT_CONFIG or ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (service, mail, inbound, tickets, registry, hours, ops):
        module.register(commands)
    return parser


def setup_logging(verbose: bool) -> None:
    from mailbot import logs  # text, journald priorities or JSON lines (MAILBOT_LOG_FORMAT)

    logs.setup(verbose)


def fail(message: str, code: int = 1) -> int:
    print(f"mailbot: {message}", file=sys.stderr)
    return code


def quiet_stdout() -> None:
    """The reader went away (`mailbot ticket list | head`): send what is left to /dev/null, so the
    interpreter's own flush at exit raises nothing either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Run one command with a private umask and terminal-safe output (mailbot.cli.terminal)."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        with safe_output():
            return _run(argv, clock)
    finally:
        os.umask(previous)


def _run(argv: Sequence[str] | None, clock: Clock | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    context = Context(args.config, clock)
    handler: Handler = args.handler
    try:
        code = handler(args, context)
        sys.stdout.flush()  # a closed pipe shows here, inside the handling below, not at exit
        return code
    except BrokenPipeError:
        quiet_stdout()
        return EX_SIGPIPE
    except (ConfigError, RefusedError) as exc:
        return fail(str(exc))
    except TransientError as exc:
        from mailbot.store.problems import lasting_problem  # only when a database error got here

        if (problem := lasting_problem(exc)) is not None:
            return fail(problem)
        return fail(f"temporary failure: {exc}", EX_TEMPFAIL)
    except MailbotError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    finally:
        context.close()


if __name__ == "__main__":
    sys.exit(main())

"""run, check-config, db upgrade."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger("mailbot")


def register(commands: Any) -> None:
    run = commands.add_parser("run", help="the daemon in the foreground (SIGTERM drains and exits 0)")
    run.set_defaults(handler=cmd_run)
    check = commands.add_parser("check-config", help="validate the configuration and say what is wrong")
    check.set_defaults(handler=cmd_check_config)
    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    db_commands.add_parser("upgrade", help="create or migrate the schema").set_defaults(handler=cmd_db_upgrade)


def cmd_run(args: argparse.Namespace, context: Any) -> int:
    from mailbot.admission import trust_warnings  # heavy imports: only for the daemon

    config = context.config
    for warning in trust_warnings(config.security):
        log.warning(warning)
    context.app.db.check_current()
    from mailbot import daemon

    return daemon.run(context.app)


def cmd_check_config(args: argparse.Namespace, context: Any) -> int:
    config = context.config
    context.app.hours  # noqa: B018  (builds the business clock: holiday calendars, time zone)
    print(f"{config.path}: OK")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, context: Any) -> int:
    context.app.db.upgrade()
    print(f"schema is up to date ({context.app.db.url.split('://', 1)[0]})")
    return 0

"""run, check-config, db upgrade, db backup."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from mailbot.cli import group
from mailbot.cli.output import add_json_flag, report
from mailbot.errors import ConfigError

log = logging.getLogger("mailbot")


def register(commands: Any) -> None:
    run = commands.add_parser("run", help="the daemon in the foreground (SIGTERM drains and exits 0)")
    run.set_defaults(handler=cmd_run)
    check = commands.add_parser(
        "check-config", help="validate the configuration and the files it names (keys, secrets, certificates)"
    )
    check.set_defaults(handler=cmd_check_config)
    db = group(commands, "db", "the database: schema and backups")
    upgrade = db.add_parser("upgrade", help="create or migrate the schema (safe to run from several hosts at once)")
    add_json_flag(upgrade)
    upgrade.set_defaults(handler=cmd_db_upgrade)
    backup = db.add_parser("backup", help="a consistent copy of the SQLite database, while the daemon runs")
    backup.add_argument("path", metavar="PATH", type=Path, help="the copy to write (replaced when it exists)")
    add_json_flag(backup)
    backup.set_defaults(handler=cmd_db_backup)


def refuse_unusable_files(config: Any) -> None:
    """Every unreadable key, secret or certificate, one line each on stderr; then refuse."""
    from mailbot.preflight import problems

    found = problems(config)
    for problem in found[:-1]:
        print(f"mailbot: {problem}", file=sys.stderr)
    if found:
        raise ConfigError(found[-1])


def cmd_run(args: argparse.Namespace, context: Any) -> int:
    from mailbot.admission import trust_warnings  # heavy imports: only for the daemon

    config = context.config
    refuse_unusable_files(config)
    context.app.db.check_current()
    for warning in trust_warnings(config.security):
        log.warning(warning)
    from mailbot import daemon

    return daemon.run(context.app)


def cmd_check_config(args: argparse.Namespace, context: Any) -> int:
    config = context.config
    refuse_unusable_files(config)
    print(f"{config.path}: OK")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, context: Any) -> int:
    db = context.app.db
    revision = db.upgrade()
    backend = db.engine.dialect.name
    report(args, {"revision": revision, "backend": backend}, f"schema is up to date ({db.url.split('://', 1)[0]})")
    return 0


def cmd_db_backup(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store.backup import backup

    size = backup(context.config.database.url, args.path)
    report(args, {"path": str(args.path), "bytes": size}, f"backed up the database to {args.path} ({size} bytes)")
    return 0

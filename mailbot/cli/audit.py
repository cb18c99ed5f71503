"""Every change made from the command line, one line in the system log: what was done and who did it.

`ticket assign`, `org set`, `inbound discard`... run from an operator's shell write to a terminal, not to
the journal where the daemon's lines are; so the line also goes to the syslog socket (mailbot.logs), under
the identifier "mailbot", where `journalctl -u mailbot` and /var/log/syslog show it beside the daemon's.
Every changing command says what it did through mailbot.cli.output.report, which calls `record`; commands
that only read call neither. `MAILBOT_AUDIT=off` turns the line off.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
from collections.abc import Mapping

from mailbot import logs
from mailbot.cli.terminal import printable

AUDIT_VARIABLE = "MAILBOT_AUDIT"
OFF = ("off", "0", "no", "false")
log = logging.getLogger("mailbot.audit")


def operator(environ: Mapping[str, str]) -> str:
    """Who ran the command: the user it ran as (whose rights it used), and the person behind sudo, runuser
    or su when that is someone else: "mailbot (logged in as alice)"."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a container's user with no passwd entry
        user = f"uid {uid}"
    behind = environ.get("SUDO_USER") or _login_name()
    return f"{user} (logged in as {behind})" if behind and behind != user else user


def _login_name() -> str | None:
    """Who logged in on the controlling terminal (utmp); None without one (a cron job, a unit)."""
    try:
        return os.getlogin()
    except OSError:
        return None


def command(args: argparse.Namespace) -> str:
    """The command's words, e.g. "ticket assign" (each group keeps its subcommand in NAME_command)."""
    words = [args.command, getattr(args, f"{args.command}_command", None)]
    return " ".join(word for word in words if word)


def record(args: argparse.Namespace, prose: str, environ: Mapping[str, str] = os.environ) -> None:
    """Log what the command did (its sentence, on one line) and who ran it, at INFO on mailbot.audit."""
    if environ.get(AUDIT_VARIABLE, "").strip().lower() in OFF:
        return
    said = printable("; ".join(line.strip() for line in prose.splitlines() if line.strip()))
    log.setLevel(logging.INFO)  # whatever level the rest of the log is at
    handler = logs.syslog_handler(environ)  # besides stderr, where every log line goes
    if handler is not None:
        log.addHandler(handler)
    try:
        log.info("%s by %s: %s", command(args), operator(environ), said)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()

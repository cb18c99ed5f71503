"""Where log lines go and how they look: a terminal's timestamped lines; under systemd, journald's priority
prefixes (sd-daemon(3): "<3>" marks an error), so `journalctl -p err` finds errors; JSON lines on request,
for a log shipper. `MAILBOT_LOG_FORMAT` = text | journal | json chooses; unset, systemd is recognised by
JOURNAL_STREAM or INVOCATION_ID, which it sets for every service.

A command run from a shell has a terminal for stderr, not the journal: what must reach the system log from
there (mailbot.cli.audit) goes to the syslog socket too (`syslog_handler`).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

FORMAT_VARIABLE = "MAILBOT_LOG_FORMAT"
FORMATS = ("text", "journal", "json")
NOISY = ("mail.log", "apscheduler", "aioimaplib", "alembic")  # alembic: a line per plugin on every upgrade
LINE = "%(levelname)s %(name)s: %(message)s"  # journald adds the time, and a syslog daemon does too
SYSLOG_VARIABLE = "MAILBOT_SYSLOG_SOCKET"
SYSLOG_SOCKET = "/dev/log"  # journald's (systemd-journald-dev-log.socket), rsyslog's or syslog-ng's


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (sd-daemon's SD_ERR and friends)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class JournalFormatter(logging.Formatter):
    """Every line of a record (a traceback's too) starts with its priority; journald adds the time."""

    def __init__(self) -> None:
        super().__init__(LINE)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def chosen_format(environ: Mapping[str, str]) -> tuple[str, str | None]:
    """(format, a warning to log or None) from the environment."""
    asked = environ.get(FORMAT_VARIABLE, "").strip().lower()
    if asked in FORMATS:
        return asked, None
    under_systemd = "JOURNAL_STREAM" in environ or "INVOCATION_ID" in environ
    fallback = "journal" if under_systemd else "text"
    if asked:
        return fallback, f"{FORMAT_VARIABLE}={asked!r} is not one of {', '.join(FORMATS)}; logging as {fallback}"
    return fallback, None


def formatter(name: str) -> logging.Formatter:
    if name == "journal":
        return JournalFormatter()
    if name == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup(verbose: bool, environ: Mapping[str, str] = os.environ) -> None:
    """Log to stderr in the chosen format, for the daemon and the commands alike."""
    name, warning = chosen_format(environ)
    quiet_records()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(name))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if warning:
        logging.getLogger("mailbot").warning(warning)


def quiet_records() -> None:
    """Log records without what no format here shows (formatter, JSON, syslog: time, level, logger, message,
    traceback): the caller's file, line and function (a walk up the stack), the thread's and the process's
    names and ids. A line cost 25-35 µs of the sender's CPU; these were a fifth of it."""
    logging._srcfile = None  # logging's documented switch (see its source) for skipping findCaller
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def stderr_is_journal(environ: Mapping[str, str]) -> bool:
    """systemd connected stderr to the journal: JOURNAL_STREAM names that stream's device and inode
    (systemd.exec(5)), and a child that kept the variable but not the stream is told apart by them."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        found = os.fstat(sys.stderr.fileno())
        return (found.st_dev, found.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):  # no such variable, or no real file behind stderr (a test's capture)
        return False


def syslog_handler(environ: Mapping[str, str] = os.environ) -> logging.Handler | None:
    """A handler for the system log's socket (facility daemon, identifier "mailbot", so the lines sit with
    the daemon's in `journalctl -u mailbot` or /var/log/syslog); None when stderr already is the journal
    (a unit's ExecStartPre: one line, not two) or when no socket is there (a container, the tests)."""
    if stderr_is_journal(environ):
        return None
    path = environ.get(SYSLOG_VARIABLE) or SYSLOG_SOCKET
    from logging.handlers import SysLogHandler  # socket and friends: only for a command that logs there

    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    handler = SysLogHandler(address=path, facility=SysLogHandler.LOG_DAEMON)
    # The handler swallows a failed connect, leaving its `socket` closed (typeshed lacks the attribute):
    # nobody listens there (a stale socket), or it is not ours to use. Then stderr only.
    connected = getattr(handler, "socket", None)
    if connected is None or connected.fileno() == -1:
        handler.close()
        return None
    handler.ident = f"mailbot[{os.getpid()}]: "  # RFC 3164 TAG[PID]: journald's SYSLOG_IDENTIFIER and _PID
    handler.append_nul = False  # a NUL ends up inside the message for some daemons
    handler.setFormatter(logging.Formatter(LINE))
    return handler

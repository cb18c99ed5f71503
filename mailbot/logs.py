"""Where log lines go and how they look: a terminal's timestamped lines; under systemd, journald's priority
prefixes (sd-daemon(3): "<3>" marks an error), so `journalctl -p err` finds errors; JSON lines on request,
for a log shipper. `MAILBOT_LOG_FORMAT` = text | journal | json chooses; unset, systemd is recognised by
JOURNAL_STREAM or INVOCATION_ID, which it sets for every service.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

FORMAT_VARIABLE = "MAILBOT_LOG_FORMAT"
FORMATS = ("text", "journal", "json")
NOISY = ("mail.log", "apscheduler", "aioimaplib", "alembic")  # alembic: a line per plugin on every upgrade


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
        super().__init__("%(levelname)s %(name)s: %(message)s")

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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(name))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if warning:
        logging.getLogger("mailbot").warning(warning)

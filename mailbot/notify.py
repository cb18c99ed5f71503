"""systemd's readiness and watchdog protocol (sd_notify(3)): one datagram of KEY=VALUE lines.

Every call is a no-op outside a Type=notify service ($NOTIFY_SOCKET unset), so the daemon calls these
unconditionally. A failed send is logged, not raised: losing a notification must not stop mail handling
(systemd notices a missing READY=1 or watchdog ping on its own and acts on it).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def ready(status: str | None = None) -> bool:
    """Tell systemd that start-up is finished (Type=notify ends the start job)."""
    return _notify("READY=1", *_status_field(status))


def stopping(status: str | None = None) -> bool:
    """Tell systemd that shutdown (the drain) has begun."""
    return _notify("STOPPING=1", *_status_field(status))


def status(text: str) -> bool:
    """A one-line state shown by `systemctl status`."""
    return _notify(*_status_field(text))


def watchdog() -> bool:
    """Keep-alive ping; must come more often than WatchdogSec= or systemd restarts the service."""
    return _notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises).

    None when no watchdog is asked of this process: the variables are unset or invalid, or
    $WATCHDOG_PID names another process (the variables were inherited from a parent).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if usec is None:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        interval = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
    return interval / 2_000_000 if interval > 0 else None


def _status_field(text: str | None) -> tuple[str, ...]:
    # The protocol is newline-separated, so a status can only be one line.
    return () if text is None else ("STATUS=" + " ".join(text.splitlines()),)


def _notify(*fields: str) -> bool:
    """Send the fields as one datagram; True when systemd was told."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    elif not address.startswith("/"):
        log.warning(
            "ignoring NOTIFY_SOCKET=%r: only AF_UNIX paths and @abstract names are supported", address
        )
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", address.replace("\0", "@"), exc)
        return False
    return True

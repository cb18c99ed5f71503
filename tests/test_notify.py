"""sd_notify over a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailbot import notify


@pytest.fixture
def systemd_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket in a temp dir, announced in $NOTIFY_SOCKET like systemd does."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


class TestMessages:
    """Each call sends one datagram of newline-separated KEY=VALUE fields."""

    def test_ready(self, systemd_socket: socket.socket) -> None:
        """ready() sends READY=1."""
        assert notify.ready() is True
        assert received(systemd_socket) == "READY=1"

    def test_ready_with_status(self, systemd_socket: socket.socket) -> None:
        """A status travels in the same datagram as READY=1."""
        notify.ready("listening on 127.0.0.1:2525")
        assert received(systemd_socket) == "READY=1\nSTATUS=listening on 127.0.0.1:2525"

    def test_stopping(self, systemd_socket: socket.socket) -> None:
        """stopping() sends STOPPING=1 and the optional status."""
        notify.stopping("draining 3 messages")
        assert received(systemd_socket) == "STOPPING=1\nSTATUS=draining 3 messages"

    def test_status_is_kept_on_one_line(self, systemd_socket: socket.socket) -> None:
        """A newline would start a new field, so a multi-line status is joined."""
        notify.status("2 tickets due\nIMAP reconnecting")
        assert received(systemd_socket) == "STATUS=2 tickets due IMAP reconnecting"

    def test_watchdog(self, systemd_socket: socket.socket) -> None:
        """watchdog() sends WATCHDOG=1."""
        assert notify.watchdog() is True
        assert received(systemd_socket) == "WATCHDOG=1"

    def test_abstract_socket(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A name starting with '@' is a Linux abstract socket (leading NUL byte)."""
        name = f"mailbot-test-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            sock.settimeout(2)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
            assert notify.watchdog() is True
            assert received(sock) == "WATCHDOG=1"


class TestOutsideSystemd:
    """Without a usable $NOTIFY_SOCKET every call is a harmless no-op."""

    def test_unset_is_a_no_op(self, systemd_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
        """Not under systemd: nothing is sent and the call says so."""
        monkeypatch.delenv("NOTIFY_SOCKET")
        assert notify.ready() is False
        assert nothing_waiting(systemd_socket)

    def test_missing_socket_is_not_fatal(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A socket path nobody listens on is logged, not raised."""
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
        assert notify.watchdog() is False

    def test_unsupported_address_is_ignored(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An AF_VSOCK address (systemd 253+ in VMs) is not sent to."""
        monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
        assert notify.ready() is False


class TestWatchdogInterval:
    """watchdog_interval() reads $WATCHDOG_USEC and $WATCHDOG_PID like sd_watchdog_enabled(3)."""

    @pytest.fixture(autouse=True)
    def _clean(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def test_unset(self) -> None:
        """No watchdog asked for."""
        assert notify.watchdog_interval() is None

    def test_half_the_timeout(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """WatchdogSec=30 gives a ping every 15 seconds."""
        monkeypatch.setenv("WATCHDOG_USEC", "30000000")
        assert notify.watchdog_interval() == 15.0

    def test_for_this_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """WATCHDOG_PID naming this process keeps the watchdog."""
        monkeypatch.setenv("WATCHDOG_USEC", "30000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        assert notify.watchdog_interval() == 15.0

    def test_for_another_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Variables inherited from a parent do not apply to this process."""
        monkeypatch.setenv("WATCHDOG_USEC", "30000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
        assert notify.watchdog_interval() is None

    @pytest.mark.parametrize("value", ["thirty", "0", "-5"])
    def test_invalid(self, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
        """A value that is not a positive number of microseconds disables the pings."""
        monkeypatch.setenv("WATCHDOG_USEC", value)
        assert notify.watchdog_interval() is None

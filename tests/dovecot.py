"""A private Dovecot for tests and benchmarks: its own configuration, users and maildirs in one folder.

Nothing system-wide is touched: the server listens on free loopback ports, keeps its runtime files, logs,
certificate and mail under `root`, and is started and stopped as a child process (`dovecot -F`).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
PASSWORD = "s3cret-pass"
INSTALL_HINT = (
    "Dovecot is not installed: run the test command of README.md (`make test`), which installs Debian's "
    "dovecot-imapd, or `apt-get install dovecot-imapd`"
)


def dovecot_binary() -> str | None:
    """The path of the `dovecot` master binary, or None when dovecot-imapd is not installed."""
    found = shutil.which("dovecot") or "/usr/sbin/dovecot"
    return found if os.access(found, os.X_OK) else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def sample_message(n: int, *, tag: str = "t", body_size: int = 200) -> bytes:
    """A small, valid RFC 5322 message whose Message-ID is `<n.tag@test.invalid>`."""
    body = (f"Message {n} of the {tag} batch. " * (1 + body_size // 32))[:body_size]
    return (
        f"From: Ana <ana{n}@school.example>\r\n"
        "To: herosupport@schoolmint.example\r\n"
        f"Subject: Help request {n}\r\n"
        f"Message-ID: <{n}.{tag}@test.invalid>\r\n"
        "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def message_id_of(raw: bytes) -> str:
    """The Message-ID header of a raw message (sample messages only: one line, no folding)."""
    found = re.search(rb"^Message-ID: (<[^>]+>)", raw, re.MULTILINE | re.IGNORECASE)
    if found is None:
        raise ValueError("message has no Message-ID")
    return found.group(1).decode()


def _live_members(group: int) -> list[int]:
    """The processes of a process group that still run (zombies hold no sockets; init reaps them late)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # it ended while we looked
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp (proc(5))
            members.append(int(stat.parent.name))
    return members


def real_clock(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without libfaketime (`make test-calendar`): the IMAP server is the tests' world, not the
    code under test. Under a pinned clock ahead of the real one, its master process (faked) sees its
    helpers' real time as the clock moving backwards and launches no new process for 3 minutes: every
    login then waited for an authentication process that never came."""
    preload = " ".join(lib for lib in environ.get("LD_PRELOAD", "").split() if "faketime" not in lib)
    cleaned = {key: value for key, value in environ.items() if not key.startswith("FAKETIME") and key != "LD_PRELOAD"}
    return cleaned | ({"LD_PRELOAD": preload} if preload else {})


class Dovecot:
    """One Dovecot server: plain IMAP with STARTTLS on `port`, implicit TLS on `ssl_port` (a self-signed
    certificate for 127.0.0.1, `cert_file`). Any user name logs in with PASSWORD."""

    def __init__(self, root: Path, *, imap_capability: str | None = None) -> None:
        binary = dovecot_binary()
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        if os.geteuid() != 0:  # as make test runs: it installs dovecot-imapd with apt-get
            raise RuntimeError("the private Dovecot runs as root (its login processes chroot)")
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.ssl_port = free_port()
        self.config_file = root / "dovecot.conf"
        self.log_file = root / "dovecot.log"
        self.cert_file = root / "cert.pem"
        self._process: subprocess.Popen[bytes] | None = None
        # Dovecot refuses to store mail as root: the mail belongs to the `mail` user
        mail = pwd.getpwnam("mail")
        self._uid, self._gid = mail.pw_uid, mail.pw_gid
        root.chmod(0o755)  # the mail user must reach the homes below
        (root / "home").mkdir()
        os.chown(root / "home", self._uid, self._gid)
        self._write_certificate()
        self.config_file.write_text(self._config(imap_capability))

    def _write_certificate(self) -> None:
        key = self.root / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-keyout",
                str(key),
                "-out",
                str(self.cert_file),
                "-addext",
                f"subjectAltName=IP:{HOST},DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )

    def _config(self, imap_capability: str | None) -> str:
        root = self.root
        capability = f"  imap_capability = {imap_capability}\n" if imap_capability else ""
        return f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_file}
protocols = imap
listen = {HOST}
ssl = yes
ssl_cert = <{self.cert_file}
ssl_key = <{root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
# no 2 s wait before answering a failed login (about 0.5 s remain): the tests watch the client's backoff
auth_failure_delay = 0
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
# every user exists and has PASSWORD: a passwd-file would be re-read at most once a second
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={self._uid} gid={self._gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {self.ssl_port}
    ssl = yes
  }}
}}
# no auth penalty (a growing delay after each failed login): the tests look at the watcher's own backoff
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
{capability}}}
"""

    def add_account(self, username: str) -> Account:
        """A new user (password PASSWORD) with an empty INBOX."""
        account = Account(self, username, PASSWORD, self.root / "home" / username)
        account.home.mkdir()
        self.chown(account.home)
        return account

    def chown(self, path: Path) -> None:
        os.chown(path, self._uid, self._gid)

    def start(self) -> None:
        """Start the server and return once it greets on its IMAP port."""
        # its own process group, so that stop() reaches every process it starts
        self._process = subprocess.Popen(
            [self.binary, "-F", "-c", str(self.config_file)], start_new_session=True, env=real_clock(os.environ)
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as sock:
                    if sock.recv(200).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"dovecot did not answer on {HOST}:{self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server and every process it started, as systemd's KillMode=control-group does: the
        master alone leaves running IMAP sessions behind, and their clients would never notice."""
        if self._process is None:
            return
        group = self._process.pid
        os.killpg(group, signal.SIGTERM)
        self._process.wait(timeout=10)
        self._process = None
        deadline = time.monotonic() + 10
        while _live_members(group):  # the listeners must be gone before a restart binds again
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot processes of group {group} outlived SIGTERM")
            time.sleep(0.01)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self, *needles: str) -> list[str]:
        """The server's log lines that contain every one of `needles`."""
        lines = self.log_file.read_text(errors="replace").splitlines()
        return [line for line in lines if all(needle in line for needle in needles)]


@contextlib.contextmanager
def running_dovecot(*, imap_capability: str | None = None) -> Iterator[Dovecot]:
    """A started `Dovecot` in a new temporary folder; stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="mailbot-dovecot-"))
    try:
        server = Dovecot(root, imap_capability=imap_capability)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root)


@dataclass
class Account:
    """One user's mailbox on a `Dovecot`, with quick ways to fill and inspect it."""

    server: Dovecot
    username: str
    password: str
    home: Path

    def maildir(self, folder: str = "INBOX") -> Path:
        base = self.home / "Maildir"
        return base if folder == "INBOX" else base / f".{folder}"

    def deliver(self, messages: Iterable[bytes], folder: str = "INBOX") -> int:
        """Write messages straight into the folder's maildir `new/` (a fast way to build a backlog)."""
        maildir = self.maildir(folder)
        for path in (maildir.parent, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
            if not path.exists():
                path.mkdir()
                self.server.chown(path)
        count = 0
        for count, raw in enumerate(messages, start=1):
            # Maildir names: time.unique.host, unique per delivery (https://cr.yp.to/proto/maildir.html)
            name = f"{time.time_ns()}.M{count}P{os.getpid()}R{secrets.token_hex(4)}.test"
            tmp = maildir / "tmp" / name
            tmp.write_bytes(raw)
            self.server.chown(tmp)
            tmp.rename(maildir / "new" / name)
        return count

    def connect(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4(HOST, self.server.port)
        client.login(self.username, self.password)
        return client

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        """Deliver one message over IMAP APPEND (what a server-side delivery looks like to an IDLE client)."""
        client = self.connect()
        try:
            status, detail = client.append(folder, None, None, raw)
            if status != "OK":
                raise RuntimeError(f"APPEND failed: {detail!r}")
        finally:
            client.logout()

    def message_ids(self, folder: str = "INBOX") -> list[str]:
        """The Message-IDs in a folder, read with BODY.PEEK so nothing changes; [] when it does not exist."""
        client = self.connect()
        try:
            status, _ = client.select(folder, readonly=True)
            if status != "OK":
                return []
            status, data = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            return sorted(message_id_of(part[1]) for part in data if isinstance(part, tuple))
        finally:
            client.logout()

    def flags(self, folder: str = "INBOX") -> list[str]:
        """The FLAGS of every message in a folder, in UID order."""
        client = self.connect()
        try:
            client.select(folder, readonly=True)
            _, data = client.uid("FETCH", "1:*", "(FLAGS)")
            return [line.decode() for line in data if isinstance(line, bytes)]
        finally:
            client.logout()

    def uidvalidity(self, folder: str = "INBOX") -> int:
        client = self.connect()
        try:
            _, data = client.status(folder, "(UIDVALIDITY)")
            found = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
            if found is None:
                raise RuntimeError(f"no UIDVALIDITY in {data!r}")
            return int(found.group(1))
        finally:
            client.logout()

    def reset_uidvalidity(self, folder: str = "INBOX") -> None:
        """Stop the server, drop the folder's UID list and indexes (as a restore from backup would), restart.

        Dovecot then numbers the messages again from 1 under a new UIDVALIDITY (RFC 3501 section 2.3.1.1).
        """
        self.server.stop()
        maildir = self.maildir(folder)
        for path in [maildir / "dovecot-uidlist", *maildir.glob("dovecot.index*")]:
            path.unlink()
        self.server.start()


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    """One private Dovecot per test module."""
    with running_dovecot() as server:
        yield server


@pytest.fixture
def account(dovecot: Dovecot) -> Account:
    """A fresh mailbox for each test."""
    return dovecot.add_account(f"support-{secrets.token_hex(4)}")

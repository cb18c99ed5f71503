"""The real `mailbot run` for the benchmarks: its configuration, its process tree, and that tree's CPU.

`settings` is the configuration every benchmark gives mailbot (the shipped trial's security with the loop
governor's per-address limits lifted, corpus.SECURITY; outgoing mail to a maildir); `Instance` writes it to a
TOML file and runs the command as users do, `.venv/bin/mailbot --config FILE run`, in a session of its own.
`mailbot run` may start processes of its own (the intake, the sender): the CPU of an instance counts the
whole tree, and stopping an instance leaves no process of it behind. A process's CPU reaches its parent's
counters (cutime, cstime) when the parent waits for it, so the sum over the live tree of each process's own
and waited-for children's CPU goes up by exactly what the tree spent, whichever processes came and went.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import SECURITY, SUPPORT, register_senders

from mailbot.app import App
from mailbot.config import load

ROOT = Path(__file__).resolve().parent.parent
MAILBOT = Path(sys.executable).parent / "mailbot"
HOST = "127.0.0.1"
HOSTNAME = "mx.bench.example"  # given, so aiosmtpd does not call socket.getfqdn() per connection
TICK = os.sysconf("SC_CLK_TCK")
STARTED = re.compile(r"started the (\w+) worker \(pid (\d+)\)")  # mailbot.supervisor's log line


def settings(url: str, maildir: Path, port: int | None = None) -> dict[str, dict[str, Any]]:
    """mailbot's configuration in the benchmarks; with `port`, its SMTP listener on HOST."""
    tables: dict[str, dict[str, Any]] = {
        "database": {"url": url},
        "support": {"addresses": [SUPPORT], "from": f"Hero Support <{SUPPORT}>"},
        "outbound": {"transport": "maildir", "maildir": str(maildir)},
        "security": SECURITY,
    }
    if port is not None:
        tables["smtp"] = {"host": HOST, "port": port, "hostname": HOSTNAME}
    return tables


def toml(tables: dict[str, dict[str, Any]]) -> str:
    """TOML for tables of strings, numbers, booleans and lists of strings (JSON writes those as TOML does)."""
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
        for name, table in tables.items()
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> dict[int, list[str]]:
    """The stat fields of `root`, its descendants and the other members of its process group (a child whose
    parent died is still counted)."""
    stats = {int(entry.name): _stat(int(entry.name)) for entry in os.scandir("/proc") if entry.name.isdigit()}
    live = {pid: fields for pid, fields in stats.items() if fields is not None}
    members = {root} if root in live else set()
    members |= {pid for pid, fields in live.items() if int(fields[2]) == root}  # the session's group
    grew = True
    while grew:
        children = {pid for pid, fields in live.items() if int(fields[1]) in members} - members
        members |= children
        grew = bool(children)
    return {pid: live[pid] for pid in members}


def cpu_seconds(stats: dict[int, list[str]]) -> float:
    """utime + stime + cutime + cstime over the processes given."""
    return sum(sum(int(f) for f in fields[11:15]) for fields in stats.values()) / TICK


def process_cpu(pid: int) -> float:
    """One process's own CPU (user and system), 0 if it is gone."""
    fields = _stat(pid)
    return 0.0 if fields is None else sum(int(f) for f in fields[11:13]) / TICK


class Instance:
    """One `mailbot run` with a configuration file of its own (its port, its maildir), restartable."""

    def __init__(self, workdir: Path, url: str, n: int = 0, *, dkim: bool = False) -> None:
        """`dkim`: every message it sends is signed, with a new 2048-bit key, as a deployment's are."""
        self.port = free_port()
        self.config = workdir / f"instance{n}.toml"
        self.sent = workdir / f"sent{n}"
        tables = settings(url, self.sent, self.port)
        if dkim:
            key = workdir / f"dkim{n}.pem"
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
            domain = SUPPORT.rpartition("@")[2]
            tables["outbound.dkim"] = {"domain": domain, "selector": "bench", "private_key_file": str(key)}
        self.config.write_text(toml(tables))
        self.log = workdir / f"instance{n}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.groups: set[int] = set()  # every process group started, killed when stopping

    def command(self, *argv: str) -> list[str]:
        return [str(MAILBOT), "--config", str(self.config), *argv]

    def prepare(self, senders: int) -> None:
        """`mailbot db upgrade`, then `senders` customers registered as named contacts."""
        subprocess.run(self.command("db", "upgrade"), cwd=ROOT, check=True, capture_output=True)
        app = App(load(self.config))
        register_senders(app, senders)
        app.close()

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                self.command("run"), cwd=ROOT, stderr=log, stdout=log, start_new_session=True
            )
        self.groups.add(self.process.pid)
        while not self.listening():
            if self.process.poll() is not None:
                raise SystemExit(f"mailbot run exited: see {self.log}")
            time.sleep(0.01)

    def listening(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def cpu(self) -> tuple[float, int]:
        """(CPU seconds the running tree has spent, how many processes it has now)."""
        assert self.process is not None
        stats = tree(self.process.pid)
        return cpu_seconds(stats), len(stats)

    def cpu_by_role(self) -> dict[str, float]:
        """Each live process's own CPU seconds by what it does: "doors" (the `mailbot run` process), and
        each worker by the role the supervisor logged when it started it (a worker that died is not counted)."""
        assert self.process is not None
        pids = {"doors": self.process.pid} | {role: int(pid) for role, pid in STARTED.findall(self.log.read_text())}
        return {role: process_cpu(pid) for role, pid in pids.items()}

    def kill(self) -> None:
        """kill -9 of the `mailbot run` process (its own processes are left to notice)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 120) -> float | None:
        """SIGTERM, then wait for the exit: how long that took (None: not within `timeout`). Then whatever is
        left of any process group this instance started is killed."""
        took: float | None = 0.0
        try:
            if self.process is not None and self.process.poll() is None:
                begin = time.perf_counter()
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                    took = time.perf_counter() - begin
                except subprocess.TimeoutExpired:
                    took = None
        finally:
            for group in self.groups:
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.process is not None:
                self.process.wait()  # reaped, whichever way it ended
        return took

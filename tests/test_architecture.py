"""Core and shell: the pure modules import nothing that does I/O (STYLE.md), so they test without servers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mailbot"
# Values in, values out: parsing, rules, clocks, composition.
CORE = ["parse", "quotes", "authn", "entitlement", "plans", "addresses", "threads", "tokens", "hours", "outbox",
        "compose", "automatic", "bounces", "assignment", "sla", "signing", "clock", "errors", "redact", "mailboxes", "reading",
        "trail", "identity", "newlines", "intake/rules"]
# Modules and libraries that touch sockets, the database, the disk or the event loop (of the intake's pipeline,
# the stages that read the message and write the decision; its rules are core).
SHELL = {"mailbot.store", "mailbot.listener", "mailbot.imap", "mailbot.imap_door", "mailbot.sender",
         "mailbot.scheduler", "mailbot.daemon", "mailbot.leases", "mailbot.cli", "mailbot.door", "mailbot.processor",
         "mailbot.intake.reading", "mailbot.intake.write", "mailbot.followups", "mailbot.workflow", "mailbot.app",
         "mailbot.notify", "sqlalchemy", "alembic", "aiosmtpd", "aioimaplib", "aiosmtplib", "apscheduler", "asyncio", "socket", "smtplib", "dns.resolver"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_shell(module: str) -> None:
    path = PACKAGE / f"{module}.py"
    assert path.exists(), f"core module mailbot/{module}.py is missing"
    shell = {name for name in imports(path) if any(name == s or name.startswith(s + ".") for s in SHELL)}
    assert shell == set(), f"mailbot/{module}.py imports shell modules {sorted(shell)}"


TESTS = Path(__file__).resolve().parent
WALL_CLOCK = ("datetime.now(", "date.today(", "time.time()", "SystemClock(")  # wall clock ok: what is refused


def test_tests_take_time_from_an_injected_clock() -> None:
    """A test that reads today's date passes on a Wednesday and fails on a Friday evening: tests pin the instant
    (FrozenClock, `run_cli`'s clock). A deliberate use says why on its line with '# wall clock ok'."""
    readers = [
        f"{path.name}:{number}"
        for path in sorted(TESTS.glob("*.py"))
        if path.name != Path(__file__).name
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(reader in line for reader in WALL_CLOCK) and "# wall clock ok" not in line
    ]
    assert readers == []

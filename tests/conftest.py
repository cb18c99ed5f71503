"""Shared fixtures: real databases (SQLite files, PostgreSQL on 127.0.0.1:5432), an injected clock,
configurations in temporary folders, and a real SMTP sink for outgoing mail."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.config import Config, from_mapping
from mailbot.dns import Resolver
from mailbot.plans import Plan, Product
from mailbot.store import registry

# Fixture plugins: a private Dovecot (dovecot, account); a running daemon and its SMTP relay (world, relay).
pytest_plugins = ["tests.dovecot", "tests.world"]

# The commands' audit lines (mailbot.cli.audit) never reach this machine's syslog from a test run: a path that
# is no socket means stderr only; tests/test_audit.py points the variable at a socket of its own.
os.environ["MAILBOT_SYSLOG_SOCKET"] = os.devnull
PG_ADMIN_URL = os.environ.get("MAILBOT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Tuesday 2026-12-01 10:00 US Eastern: inside business hours.
TUESDAY_10_ET = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
CUSTOMER_ADDRESS = "ana@lincoln.example"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(TUESDAY_10_ET)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A configuration file for the commands: SQLite and the sent maildir in tmp_path (tests.test_cli.CONFIG)."""
    from tests.test_cli import CONFIG

    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(db=tmp_path / "mailbot.db", port=0, sent=tmp_path / "sent"))
    return path


def run_cli(
    capsys: pytest.CaptureFixture[str], *argv: str, clock: FrozenClock | None = None
) -> tuple[int, str, str]:
    """`mailbot ARGV...` in this process on a pinned instant (Tuesday 10:00 ET unless `clock` says otherwise):
    the exit status, stdout and stderr."""
    from mailbot.cli import main

    try:
        code = main(list(argv), clock=clock or FrozenClock(TUESDAY_10_ET))
    except SystemExit as exit_:  # argparse usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _postgres_available() -> bool:
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except sa.exc.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A private PostgreSQL database for this test run, dropped at the end."""
    if not _postgres_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (start it; see README)")
    name = f"mailbot_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on both backends; PostgreSQL starts from an empty schema every time."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mailbot.db'}"
    url: str = request.getfixturevalue("postgres_database")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mailbot.db'}"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


@pytest.fixture
def make_config(tmp_path: Path, sqlite_url: str) -> Callable[..., Config]:
    """A configuration for a test: loopback listener on a free port, mail written to a maildir in tmp."""

    def build(overrides: dict[str, Any] | None = None, *, db: str | None = None) -> Config:
        base: dict[str, Any] = {
            "database": {"url": db or sqlite_url},
            "support": {
                "addresses": ["herosupport@schoolmint.com"],
                "from": "Hero Support <herosupport@schoolmint.com>",
            },
            "smtp": {"host": "127.0.0.1", "port": 0},
            "outbound": {"transport": "maildir", "maildir": str(tmp_path / "sent")},
            "business_hours": {"holidays": ["2026-11-26", "2026-12-25"]},
            "security": {"require_sender_auth": False},
        }
        return from_mapping(deep_merge(base, overrides or {}), "test")

    return build


def query_plan(session: Session, statement: sa.Executable) -> str:
    """How the database would run `statement` (its bound values written in), as one string to search:
    SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN, in `session`'s transaction and its settings."""
    sql = statement.compile(session.bind, compile_kwargs={"render_postcompile": True, "literal_binds": True})
    explain = "EXPLAIN QUERY PLAN " if session.bind.dialect.name == "sqlite" else "EXPLAIN "
    return str(session.connection().exec_driver_sql(explain + str(sql)).all())


def register_customer(session: Session, now: datetime) -> None:
    """The test customer, once per database: Lincoln High (Full Hero, Silver, no end date) and its named
    contact Ana Diaz <ana@lincoln.example>, the sender of tests.mailers.message()."""
    if registry.find_contact(session, CUSTOMER_ADDRESS) is not None:
        return
    org = registry.add_org(session, "Lincoln High", product=Product.FULL, plan=Plan.SILVER, now=now)
    registry.add_contact(session, CUSTOMER_ADDRESS, org=org, name="Ana Diaz", now=now)


@pytest.fixture
def make_app(make_config: Callable[..., Config], clock: FrozenClock) -> Iterator[Callable[..., App]]:
    """Apps on an upgraded schema, closed after the test.

    `customer` registers the test customer (register_customer), so mail from ana@lincoln.example is
    entitled; `resolver` replaces DNS for sender authentication.
    """
    apps: list[App] = []

    def build(
        overrides: dict[str, Any] | None = None,
        *,
        db: str | None = None,
        customer: bool = True,
        resolver: Resolver | None = None,
    ) -> App:
        app = App(make_config(overrides, db=db), clock)
        app.db.upgrade()
        if resolver is not None:
            app.resolver = resolver
        if customer:
            app.db.call(register_customer, clock.now())
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    return make_app()

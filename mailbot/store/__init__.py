"""The only package that speaks SQL.

`Database` owns the engine. Store functions are plain synchronous functions taking a `Session`; the CLI calls
them directly, and the daemon runs them through `Database.run`, which keeps all blocking database work on
worker threads so the event loop never waits on a disk or a socket. The doors' insert also runs on a bare
Core connection (`Database.statements`, `run_statements`): the one write before each 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, PoolProxiedConnection, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailbot.errors import ConfigError, TransientStoreError
from mailbot.store.problems import describe, lasting_problem
from mailbot.store.writers import Turns

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

T = TypeVar("T")
V = TypeVar("V")
log = logging.getLogger("mailbot.store")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# pg_advisory_xact_lock's key for schema migrations: any constant other software on the database does not use.
MIGRATION_LOCK = 0x6D61696C626F74  # "mailbot"
UPGRADE_WAIT_MS = 10 * 60 * 1000  # another host's migration may take minutes; systemd's start timeout bounds it
# Values per IN list (the batch look-ups of mailbot.facts): far below SQLite's and PostgreSQL's parameter limits.
CHUNK = 500


def chunks(values: Collection[V]) -> Iterator[list[V]]:
    """`values` in lists of at most CHUNK, for statements with an IN list."""
    listed = list(values)
    for start in range(0, len(listed), CHUNK):
        yield listed[start : start + CHUNK]


# PostgreSQL, for the rest of a transaction: no sequential scan where an index can answer, no parallel workers.
# The planner estimates an IN list's rows from the table's statistics, and a table autovacuum has not analysed
# yet (a new database, one restored from a dump, a minute's burst of mail) has none: it then took the batch's
# 200 Message-IDs for the whole of ticket_messages and scanned it, with parallel workers, for every batch, so
# the intake's cost grew with the conversations stored (bench/RESULTS.md, section 17).
_BY_INDEX = "SELECT set_config('enable_seqscan', 'off', true), set_config('max_parallel_workers_per_gather', '0', true)"


def by_index(session: Session) -> None:
    """Make the rest of this transaction's look-ups use the indexes, whatever the planner's statistics say:
    for a transaction of look-ups by key (the intake's batch), where a scan of a growing table is never
    cheaper. SQLite's planner needs no statistics for that."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(_BY_INDEX)


def _sqlite_pragmas(lock_timeout: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers work beside the writer; synchronous=FULL makes a commit durable before we answer 250.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        cursor.close()

    return on_connect


def _begin_immediate(connection: PoolProxiedConnection) -> None:
    connection.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]


def make_engine(url: str, lock_timeout: float = 10.0) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": lock_timeout})
        event.listen(engine, "connect", _sqlite_pragmas(lock_timeout))
        # pysqlite's own transaction handling defers BEGIN; take the write lock at BEGIN instead so two writers
        # never deadlock upgrading a read lock (the SQLAlchemy-documented recipe, but as the dialect's own
        # BEGIN on the driver: its "begin" event ran the statement through SQLAlchemy's whole execution path,
        # 10 µs of each transaction's 65; a failure is wrapped as any driver error is).
        event.listen(engine, "connect", lambda conn, _r: setattr(conn, "isolation_level", None))
        engine.dialect.do_begin = _begin_immediate  # type: ignore[method-assign,assignment]
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args={"connect_timeout": max(1, int(lock_timeout))}
    )


class Database:
    def __init__(
        self, url: str, *, lock_timeout: float = 10.0, threads: int | None = None, gives_way: bool = False
    ) -> None:
        """`gives_way`: this process writes behind the doors (a worker), and lets them write first
        (mailbot.store.writers)."""
        self.url = url
        self.lock_timeout = lock_timeout
        self.engine = make_engine(url, lock_timeout)
        self._file_seen = False  # SQLite: the database file was there once (mailbot.store.Database._require_file)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time: one worker thread serializes writes without lock contention.
        workers = threads or (1 if self.is_sqlite else 4)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mailbot-db")
        file = self.sqlite_file
        self.turns = Turns(file, lock_timeout, gives_way=gives_way) if file is not None else None

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database's file (None: PostgreSQL, or SQLite in memory)."""
        path = self.engine.url.database if self.is_sqlite else None
        return Path(path) if path and path != ":memory:" else None

    def _create_file(self) -> None:
        """`db upgrade` alone creates a SQLite database: raw mail and the site's secret live there, so it is
        the owner's alone whatever the umask (SQLite gives its -wal and -shm files the same permissions)."""
        if (path := self.sqlite_file) is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))

    def _require_file(self) -> None:
        """Any other command on a SQLite file that is not there is a mistake (a relative path read from another
        working directory): said in one line, never papered over with a new empty database. Looked at until
        the file is seen once, not on every transaction after."""
        if self._file_seen:
            return
        if (path := self.sqlite_file) is not None and not path.exists():
            where = "" if path.is_absolute() else f" (a relative path, read from the working directory {Path.cwd()})"
            raise ConfigError(
                f"database.url: {path.absolute()} does not exist{where}: run `mailbot db upgrade` to create it, "
                "or name the existing one"
            )
        self._file_seen = True

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error.

        Database errors surface as TransientStoreError: the caller answers 451 / exit 75 / retries later.
        """
        with self._guarded(self.sessions.begin) as session:
            yield session

    @contextlib.contextmanager
    def statements(self) -> Iterator[Connection]:
        """`transaction` without the ORM: a Core connection, for plain statements on a hot path (the doors'
        group commit before each 250), where the session's unit of work cost more than the insert."""
        with self._guarded(self.engine.begin) as connection:
            yield connection

    @contextlib.contextmanager
    def _guarded(self, begin: Callable[[], contextlib.AbstractContextManager[V]]) -> Iterator[V]:
        self._require_file()
        try:
            with self._turn(), begin() as opened:
                yield opened
        except (OperationalError, DBAPIError) as exc:
            raise TransientStoreError(f"database unavailable: {describe(exc)}") from exc

    def _turn(self) -> contextlib.AbstractContextManager[None]:
        return self.turns.writing() if self.turns is not None else contextlib.nullcontext()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn(session, *args) in one transaction (synchronously)."""
        with self.transaction() as session:
            return fn(session, *args, **kwargs)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn(session, *args) in one transaction on a database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self.call(fn, *args, **kwargs))

    async def run_statements(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) in one `statements` transaction on a database thread."""

        def call() -> T:
            with self.statements() as connection:
                return fn(connection, *args)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run any blocking callable on a database thread (it manages its own transactions)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args))

    def _alembic(self) -> AlembicConfig:
        from alembic.config import Config as AlembicConfig  # alembic: only to migrate or check the schema

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def upgrade(self) -> str:
        """Create or migrate the schema to the newest revision (alembic), safely from several hosts at once;
        returns that revision.

        Two hosts booting together both run the unit's ExecStartPre: the migration runs in one transaction
        under a lock, so the second waits for the first, then finds the schema current. PostgreSQL: a
        transaction-level advisory lock; SQLite: its own write lock, taken at BEGIN (BEGIN IMMEDIATE).
        """
        from alembic import command
        from alembic.script import ScriptDirectory

        cfg = self._alembic()
        self._create_file()
        try:
            with self.engine.connect() as connection, self._patient(connection), connection.begin():
                if not self.is_sqlite:
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        except (OperationalError, DBAPIError) as exc:
            raise self._failure(exc) from exc
        return str(ScriptDirectory.from_config(cfg).get_current_head())

    @contextlib.contextmanager
    def _patient(self, connection: Connection) -> Iterator[None]:
        """SQLite: wait up to UPGRADE_WAIT_MS for the write lock (set before BEGIN, whose wait it is), then
        give the pooled connection back with its usual timeout."""
        if not self.is_sqlite:
            yield
            return
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.execute(f"PRAGMA busy_timeout={UPGRADE_WAIT_MS}")
        try:
            yield
        finally:
            driver.execute(f"PRAGMA busy_timeout={int(self.lock_timeout * 1000)}")

    def check_current(self) -> None:
        """Refuse to serve on a schema older (or newer) than this code, or on a database that is not there."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self._alembic()).get_current_head()
        self._require_file()
        try:
            with self.engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
        except (OperationalError, DBAPIError) as exc:
            raise self._failure(exc) from exc
        if current != head:
            raise ConfigError(
                f"database schema is at {current or 'nothing'}, this mailbot needs {head}: run `mailbot db upgrade`"
            )

    @staticmethod
    def _failure(exc: DBAPIError) -> ConfigError | TransientStoreError:
        """A set-up mistake is refused for good (exit 1); anything else may pass (exit 75, a restart)."""
        if (problem := lasting_problem(exc)) is not None:
            return ConfigError(problem)
        return TransientStoreError(f"database unavailable: {describe(exc)}")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
        if self.turns is not None:
            self.turns.close()

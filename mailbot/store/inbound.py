"""Raw inbound messages: stored first, processed after."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    Dialect,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from mailbot.errors import TransientStoreError
from mailbot.store import driver
from mailbot.store.schema import InboundMessage, fresh


class TakenOver(Exception):
    """Claimed rows another instance took over meanwhile (this one stalled past its lease): nothing of the
    batch may be written."""


@dataclass(frozen=True)
class RawMessage:
    """What a door hands over: the bytes exactly as received, and the envelope."""

    raw: bytes
    source: str
    envelope_from: str | None = None
    envelope_to: Sequence[str] = ()
    peer: str | None = None  # the SMTP/LMTP client's IP address


_COLUMNS = (
    "received_at", "source", "envelope_from", "envelope_to", "peer", "size", "raw", "status", "attempts"
)
_SQLITE_INSERT = (
    f"INSERT INTO {InboundMessage.__tablename__} ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) RETURNING id"
)
_inbound = cast(Table, InboundMessage.__table__)
_POSTGRESQL_INSERT = insert(_inbound).returning(_inbound.c.id)


def insert_many(session: Session | Connection, messages: Sequence[RawMessage], now: datetime) -> list[int]:
    """Store raw messages as pending rows; returns their ids in the order given. On a session or, for the
    doors' group commit, a bare connection (Database.statements)."""
    rows = [
        (now, m.source, m.envelope_from, list(m.envelope_to), m.peer, len(m.raw), m.raw, "pending", 0)
        for m in messages
    ]
    connection = session if isinstance(session, Connection) else session.connection()
    if connection.dialect.name == "sqlite":
        return _insert_sqlite(connection, rows)
    return _insert_postgresql(connection, rows)


@functools.cache
def _processors(dialect: Dialect) -> list[Callable[[Any], Any] | None]:
    """The columns' own bind processors, in _COLUMNS order, worked out once per dialect."""
    columns = InboundMessage.__table__.c
    return [columns[name].type.dialect_impl(dialect).bind_processor(dialect) for name in _COLUMNS]


def _insert_sqlite(connection: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
    """The rows through the driver itself, one prepared INSERT ... RETURNING each.

    This is the listener's group commit, run beside the event loop before each 250. A commit of 5 rows
    costs 410 µs of CPU this way, 590 µs through a Core insert and 790 µs through the ORM; that was 8% of
    the listener's rate at ten sessions (bench/RESULTS.md). The values still pass the columns' own type
    processors, so they are stored exactly as the ORM stores them.
    """
    processors = _processors(connection.dialect)
    cursor = cast(sqlite3.Connection, connection.connection.driver_connection).cursor()
    try:
        ids = []
        for row in rows:
            cursor.execute(_SQLITE_INSERT, [p(v) if p else v for p, v in zip(processors, row, strict=True)])
            ids.append(cursor.fetchone()[0])
        return ids
    except sqlite3.OperationalError as exc:  # locked, disk full, I/O error: the caller answers 451
        raise TransientStoreError(f"database unavailable: {exc}") from exc
    finally:
        cursor.close()


def _insert_postgresql(connection: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
    """The rows through psycopg's executemany, one INSERT ... RETURNING each, in one pipeline (one round trip).

    The same SQL for any number of rows, so psycopg prepares it once and keeps its conversion: SQLAlchemy's
    multi-row INSERT was a new statement for each number of rows, over the 4 KB psycopg caches, parsed
    again on every commit (with its compilation, a quarter of the doors' CPU in the database's thread under
    load, bench/RESULTS.md section 16). The values pass the columns' own bind processors (mailbot.store.driver),
    so they are stored exactly as the ORM stores them."""
    import psycopg  # here: an instance on SQLite never loads the PostgreSQL driver

    plain = driver.plain(_POSTGRESQL_INSERT, _COLUMNS, connection.dialect)
    binds = [plain.binds[name] or driver.as_is for name in _COLUMNS]
    values = [{name: bind(value) for name, bind, value in zip(_COLUMNS, binds, row, strict=True)} for row in rows]
    cursor = cast(psycopg.Connection[Any], connection.connection.driver_connection).cursor()
    try:
        cursor.executemany(plain.sql, values, returning=True)
        ids = []
        while True:  # a result per row, in order
            ids.append(cast(tuple[int], cursor.fetchone())[0])
            if not cursor.nextset():
                return ids
    except psycopg.OperationalError as exc:  # the server gone, a lock timeout: the caller answers 451
        raise TransientStoreError(f"database unavailable: {exc}") from exc
    finally:
        cursor.close()


# Built once (see mailbot.store.registry): the runner claims a batch every few milliseconds under load.
_CLAIMABLE = and_(
    _inbound.c.status == "pending",
    or_(_inbound.c.claimed_until.is_(None), _inbound.c.claimed_until < bindparam("now")),
)
# A common table expression, computed once. As a plain `IN (subquery)`, PostgreSQL may plan the subquery as
# the inner side of a nested loop and run it again for each row: each run locks and skips the rows the
# statement just updated, so a claim of 8 took the whole backlog (52 of 52 rows).
_CANDIDATES = (
    select(_inbound.c.id, _inbound.c.size)
    .where(_CLAIMABLE)
    .order_by(_inbound.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
    .cte("candidates")
    .prefix_with("MATERIALIZED", dialect="postgresql")
)
# The candidates whose raw mail before them in the batch stays under the budget: the first always (a message
# as large as the door allows is decided too, alone). A window function may not share a query with FOR UPDATE,
# hence a step of its own.
_BEFORE = (func.sum(_CANDIDATES.c.size).over(order_by=_CANDIDATES.c.id) - _CANDIDATES.c.size).label("before")
_ORDERED = select(_CANDIDATES.c.id, _BEFORE).subquery("ordered")
_WITHIN = select(_ORDERED.c.id).where(_ORDERED.c.before < bindparam("budget", type_=BigInteger))
_CLAIM = (
    update(_inbound)
    .where(_inbound.c.id.in_(_WITHIN), _CLAIMABLE)
    .values(claimed_by=bindparam("owner"), claimed_until=bindparam("until"), attempts=_inbound.c.attempts + 1)
    .returning(*(column for column in _inbound.c if column.key != "trail"))  # the trail is written, never read
)


def claim_pending(
    session: Session, now: datetime, lease: timedelta, limit: int, owner: str | None = None, *, budget: int = 2**62
) -> list[InboundMessage]:
    """Take up to `limit` pending messages for processing as `owner`, and no more than `budget` bytes of raw
    mail beyond the first of them; a lease keeps other instances off them.

    A lease that ran out (its holder died, its renewals stopped) makes the message claimable again. The conditional UPDATE is the
    lock: with several instances on one database, each row goes to exactly one of them (one statement for
    the whole batch, its candidates a subquery; its RETURNING gives the rows this instance won, with their
    new leases). On PostgreSQL the candidates are read FOR UPDATE SKIP LOCKED: rows another instance is
    processing right now are passed over, not waited for (waiting made two instances no faster than one).
    One statement, not a SELECT then an UPDATE: the claim runs once a batch (bench/RESULTS.md, 11.A).

    The rows come back as new objects no session holds, built from the statement's values (a Core
    statement: the ORM's loading of the same rows cost more than the statement, bench/RESULTS.md 13.D);
    the intake writes their outcomes itself (mailbot.store.batch), and a row decided alone is read again
    through the session (`many`)."""
    values = {"now": now, "limit": limit, "until": now + lease, "owner": owner, "budget": budget}
    claimed = session.connection().execute(_CLAIM, values).mappings().all()
    return sorted((fresh(InboundMessage, **row) for row in claimed), key=lambda row: row.id)


def many(session: Session, ids: Sequence[int]) -> list[InboundMessage]:
    """These rows through the session, in the order of `ids` (those that exist)."""
    found = {row.id: row for row in session.scalars(select(InboundMessage).where(InboundMessage.id.in_(ids)))}
    return [found[id_] for id_ in ids if id_ in found]


_STILL_HELD = (
    select(InboundMessage.id)
    .where(
        InboundMessage.id.in_(bindparam("ids", expanding=True)),
        InboundMessage.status == "pending",
        InboundMessage.claimed_by == bindparam("owner"),
    )
    .with_for_update()
)


def still_held(session: Session, ids: Sequence[int], owner: str) -> set[int]:
    """Which of these rows `owner` still holds, pending, locked for this transaction: a holder whose lease
    ran out while it worked (stalled, cut off from the database) finds another instance took them over.
    Once a batch, built once and run on the connection (131 -> 33 µs: bench/RESULTS.md, section 6)."""
    return set(session.connection().scalars(_STILL_HELD, {"ids": list(ids), "owner": owner}))


def release(session: Session, ids: Sequence[int], owner: str) -> None:
    """Give `owner`'s claimed rows back (their processing failed for the database's sake): pending again at
    once. Rows another instance took over meanwhile keep its claim."""
    session.execute(
        update(InboundMessage)
        .where(InboundMessage.id.in_(ids), InboundMessage.status == "pending", InboundMessage.claimed_by == owner)
        .values(claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )


def settled(session: Session, ids: Sequence[int]) -> dict[int, bool]:
    """Of these rows, the ones the intake is done with for now, each with whether it failed (could not be
    read); pending ones it deferred (a DNS failure) or gave back count as done: they wait for a later try."""
    rows = session.execute(
        select(InboundMessage.id, InboundMessage.status).where(
            InboundMessage.id.in_(ids),
            or_(InboundMessage.status != "pending", and_(InboundMessage.attempts > 0, InboundMessage.claimed_by.is_(None))),
        )
    )
    return {inbound_id: status == "failed" for inbound_id, status in rows}


def get(session: Session, inbound_id: int, *, lock: bool = False) -> InboundMessage | None:
    """One row; `lock` holds it (SELECT ... FOR UPDATE on PostgreSQL; SQLite's write lock already does)."""
    return session.get(InboundMessage, inbound_id, with_for_update=lock)


# A failed message stays failed until a person retries it or discards it; a discarded one is kept with its
# bytes and its error (`mailbot inbound raw`, `inbound failed --discarded`) and may still be retried.
RETRYABLE = ("failed", "discarded")


def requeue(session: Session, ids: Sequence[int] = ()) -> list[int]:
    """Put failed messages back in the queue (all failed ones, or the failed or discarded ids given); the ids
    put back, in order."""
    statement = update(InboundMessage)
    if ids:
        statement = statement.where(InboundMessage.id.in_(ids), InboundMessage.status.in_(RETRYABLE))
    else:
        statement = statement.where(InboundMessage.status == "failed")
    result = session.execute(
        statement.values(status="pending", claimed_by=None, claimed_until=None, error=None).returning(InboundMessage.id)
    )
    return sorted(result.scalars())


def discard(session: Session, row: InboundMessage, now: datetime) -> None:
    """A failed message set aside: kept with its bytes and error, no longer listed as failed nor retried
    by a plain `inbound retry`."""
    row.status, row.processed_at = "discarded", now


def failed(session: Session, status: str = "failed") -> list[InboundMessage]:
    """The failed messages (or, with status="discarded", those set aside), oldest first."""
    statement = select(InboundMessage).where(InboundMessage.status == status).order_by(InboundMessage.id)
    return list(session.scalars(statement))

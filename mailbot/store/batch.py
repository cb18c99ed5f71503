"""The intake's batch written at its end as Core statements: one executemany per table, not a unit of work.

The decisions of a batch build its new rows as mapped objects: the tickets it opens, with their messages
and attachments, and the mail it queues (the session never holds them: the batch's facts list them,
mailbot.facts), and what the session holds new (attachment bytes, a message on a stored ticket). Nothing
reads them back through the session: the batch's facts answer every question. Here their column values are
taken as they stand and written, table by table in the order of the foreign keys, through the driver's
executemany (each value bound by its column type, as SQLAlchemy binds it); an id the database allocates is
read back (RETURNING, in order) only for a row whose children name it (a message with attachments). The
inbound rows get their outcomes in one UPDATE per set of columns, through the driver too. Then the rows leave the session: its
flush has nothing left of them. The unit of work's flush cost about 0.6 ms of CPU a message for the same
rows, its session.add and expunge cascades more (bench/RESULTS.md, section 11.A).

The unique indexes still refuse a duplicate (IntegrityError): the caller's savepoint undoes the batch.
Anything else the decisions changed (a ticket a follow-up reopened, a specialist's turn, a bounced
contact) is few rows, left to the session's flush.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Insert, Table, Update, bindparam, insert, inspect, update
from sqlalchemy.orm import Mapper, RelationshipDirection, Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.dml import ReturningInsert

from mailbot.store import driver
from mailbot.store.inbound import TakenOver
from mailbot.store.schema import Attachment, Base, Blob, InboundMessage, OutboxItem, Ticket, TicketMessage

# Parents before the rows that name them.
ORDER: tuple[type[Base], ...] = (Blob, Ticket, TicketMessage, Attachment, OutboxItem)
_inbound = cast(Table, InboundMessage.__table__)


@dataclass(frozen=True)
class _Layout:
    """How one mapped class's objects become rows (read once from its mapping)."""

    table: Table
    columns: tuple[tuple[str, str, Any], ...]  # attribute, column, its default (a ColumnDefault or None)
    generated: str | None  # the attribute of an id the database allocates, read back
    parents: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # many-to-one: (link, ((fk, parent's key),))
    children: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # one-to-many: (link, ((key, child's fk),))
    collections: tuple[tuple[str, str], ...]  # many-to-one link, the parent's collection of these
    insert: Insert  # built once: a statement's cache key is worked out on each new statement object
    insert_returning: ReturningInsert[Any] | None  # the same, reading back the generated ids in order


@cache
def _layout(cls: type[Base]) -> _Layout:
    mapper: Mapper[Any] = inspect(cls)
    table = cast(Table, mapper.local_table)

    def attribute(column: Any, of: Mapper[Any] = mapper) -> str:
        return of.get_property_by_column(column).key

    columns = tuple((prop.key, prop.columns[0].key, prop.columns[0].default) for prop in mapper.column_attrs)
    generated = attribute(table.autoincrement_column) if table.autoincrement_column is not None else None
    parents, children, collections = [], [], []
    for rel in mapper.relationships:
        other = rel.mapper
        if rel.direction is RelationshipDirection.MANYTOONE:
            pairs = tuple((attribute(local), attribute(remote, other)) for local, remote in rel.local_remote_pairs)
            parents.append((rel.key, pairs))
            if rel.back_populates:
                collections.append((rel.key, rel.back_populates))
        elif rel.direction is RelationshipDirection.ONETOMANY:
            pairs = tuple((attribute(local), attribute(remote, other)) for local, remote in rel.local_remote_pairs)
            children.append((rel.key, pairs))
    statement = insert(table)
    returning = (
        statement.returning(table.c[generated], sort_by_parameter_order=True) if generated is not None else None
    )
    return _Layout(
        table, columns, generated, tuple(parents), tuple(children), tuple(collections), statement, returning
    )


def write(
    session: Session,
    opened: Sequence[Ticket] = (),
    planned: Sequence[OutboxItem] = (),
    inbound: Sequence[InboundMessage] = (),
    owner: str = "",
) -> None:
    """Write the tickets `opened` with their messages and attachments and the outbox items `planned` (the
    session holds neither), the session's new rows, and the outcomes of `inbound`, rows `owner` claimed
    (TakenOver when it no longer holds one of them); then let them go.

    A new object of a kind not in ORDER leaves the whole batch to the session's flush, as before: the
    tickets `opened` and the items `planned` join the session for it."""
    made = _made(session, opened, planned)
    groups: dict[type[Base], list[Any]] = {cls: [] for cls in ORDER}
    if any(type(obj) not in groups for obj in made):
        session.add_all([*(ticket for ticket in opened if ticket not in session), *planned])
        return
    for obj in made:
        groups[type(obj)].append(obj)
    connection = session.connection()
    for cls, objects in groups.items():
        if objects:
            _insert(connection, _layout(cls), objects)
    for obj in made:
        _committed_collections(session, obj)
    for obj in made:
        if obj in session:
            session.expunge(obj)
    _outcomes(session, inbound, owner)


def _kind(obj: Any) -> type[Base]:
    return cast(type[Base], type(obj))


def _made(session: Session, opened: Sequence[Ticket], planned: Sequence[OutboxItem]) -> list[Any]:
    """The rows to write: what the session holds new, in the order it was made, the tickets `opened` with
    what hangs from them (their messages, their attachments), and the items `planned`, which no session
    holds."""
    made = sorted(session.new, key=lambda obj: inspect(obj).insert_order or 0)
    below: list[Any] = [ticket for ticket in opened if ticket not in session]
    while below:
        made.extend(below)
        below = [
            child
            for obj in below
            for link, _ in _layout(_kind(obj)).children
            for child in obj.__dict__.get(link) or ()
            if child not in session
        ]
    return [*made, *planned]


def _insert(connection: Connection, layout: _Layout, objects: list[Any]) -> None:
    for obj in objects:
        values = obj.__dict__
        for link, pairs in layout.parents:  # the parent is written: its key is known now
            if (parent := values.get(link)) is not None:
                for fk, key in pairs:
                    if values.get(fk) is None:
                        set_committed_value(obj, fk, getattr(parent, key))
    generated, returning = layout.generated, layout.insert_returning
    if generated is not None and returning is not None and any(_unnamed_parent(layout, obj) for obj in objects):
        ids = connection.execute(returning, [_values(layout, obj) for obj in objects]).scalars().all()
        for obj, id_ in zip(objects, ids, strict=True):
            set_committed_value(obj, generated, id_)
    else:
        _insert_many(connection, layout, objects)
    for obj in objects:
        for link, pairs in layout.children:  # their children are written after them, naming them
            for child in obj.__dict__.get(link) or ():
                for key, fk in pairs:
                    set_committed_value(child, fk, getattr(obj, key))


def _insert_many(connection: Connection, layout: _Layout, objects: list[Any]) -> None:
    """The rows through the driver's executemany, each value through its column type's bind processor, as
    SQLAlchemy's executemany binds them, but without a parameter dict made and read again for each row
    (bench/RESULTS.md, 13.D). An id the database allocates is left out when no row has one; rows that
    differ in that take SQLAlchemy's path."""
    generated = layout.generated
    allocated = {obj.__dict__.get(generated) is None for obj in objects} if generated is not None else {False}
    if len(allocated) > 1:
        connection.execute(layout.insert, [_values(layout, obj) for obj in objects])
        return
    attributes = {
        column: (name, default) for name, column, default in layout.columns if not (name == generated and True in allocated)
    }
    plain = driver.plain(layout.insert, tuple(attributes), connection.dialect)
    order = [(*attributes[column], plain.binds[column]) for column in plain.order]
    rows = [_bound(obj.__dict__, order) for obj in objects]
    connection.exec_driver_sql(plain.sql, rows if plain.positional else [dict(zip(plain.order, row)) for row in rows])


def _bound(values: dict[str, Any], order: list[tuple[str, Any, Callable[[Any], Any] | None]]) -> tuple[Any, ...]:
    """One row's parameters, in the driver's order, as the column types bind them."""
    row = []
    for name, default, bind in order:
        value = values[name] if name in values else _unset(default)
        row.append(value if bind is None else bind(value))
    return tuple(row)


def _values(layout: _Layout, obj: Any) -> dict[str, Any]:
    values = obj.__dict__
    return {
        column: values[name] if name in values else _unset(default)
        for name, column, default in layout.columns
        if not (name == layout.generated and values.get(name) is None)
    }


def _unnamed_parent(layout: _Layout, obj: Any) -> bool:
    """Whether `obj` gets its id from the database and has children to name it: the ids are read back then
    (RETURNING), else not (a plain executemany; nothing reads a written row's id after the batch)."""
    values = obj.__dict__
    return values.get(layout.generated) is None and any(values.get(link) for link, _ in layout.children)


def _unset(default: Any) -> Any:
    """What the unit of work writes for an attribute never set: the column's default, else NULL."""
    if default is None:
        return None
    return default.arg(None) if default.is_callable else default.arg


def _committed_collections(session: Session, obj: Any) -> None:
    """A stored parent's collection that gained `obj` (a follow-up on a stored ticket) holds it as written:
    the session's flush must not take it for an addition to make."""
    for link, collection in _layout(_kind(obj)).collections:
        parent = obj.__dict__.get(link)
        if parent is not None and parent in session and inspect(parent).persistent:
            set_committed_value(parent, collection, list(getattr(parent, collection)))


def _columns(cls: type[Base], names: Sequence[str]) -> list[tuple[str, str]]:
    """(attribute, column) of these attributes of `cls`."""
    known = {name: column for name, column, _ in _layout(cls).columns}
    return [(name, known[name]) for name in names]


@cache
def _outcome_update(changed: tuple[str, ...]) -> Update:
    """The UPDATE of these attributes of an inbound row its claimer still holds, pending (mailbot.leases),
    built once per set (a few sets ever)."""
    return (
        update(_inbound)
        .where(
            _inbound.c.id == bindparam("row_id"),
            _inbound.c.status == "pending",
            _inbound.c.claimed_by == bindparam("owner"),
        )
        .values({column: bindparam(f"v_{name}") for name, column in _columns(InboundMessage, changed)})
    )


def _outcomes(session: Session, inbound: Sequence[InboundMessage], owner: str) -> None:
    """The columns the decisions set on each inbound row (claimed rows no session holds,
    mailbot.store.inbound.claim_pending), one UPDATE per set of columns, on the rows `owner` still holds:
    the claim's check, made with the write instead of a statement before the batch (bench/RESULTS.md, 13.D).
    A row another instance took over meanwhile (this one stalled past its lease) is not written: TakenOver,
    and the caller undoes the batch."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in inbound:
        changed = tuple(sorted(inspect(row).committed_state))
        if changed:
            values = {f"v_{name}": getattr(row, name) for name in changed}
            by_columns.setdefault(changed, []).append({"row_id": row.id, "owner": owner, **values})
    connection = session.connection()
    for changed, rows in by_columns.items():
        if driver.run_many(connection, _outcome_update(changed), rows).rowcount != len(rows):
            raise TakenOver(f"another instance took over some of inbound messages {[r['row_id'] for r in rows]}")

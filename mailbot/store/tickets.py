"""Tickets and their conversation."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from mailbot.store import chunks
from mailbot.store.schema import (
    Attachment,
    Base,
    Blob,
    InboundMessage,
    Specialist,
    Ticket,
    TicketMessage,
    fresh,
)

if TYPE_CHECKING:  # a type only: `ticket list` need not load the mail parser
    from mailbot.parse import Attachment as ParsedAttachment

_LAST_ID = select(func.max(Ticket.id))
_DRAW_POSTGRESQL = text("SELECT nextval(pg_get_serial_sequence('tickets', 'id')) FROM generate_series(1, :n)")
# How long ids drawn for a batch and left unused serve later batches: long enough for the next batch under
# load, short enough that a ticket is not numbered below the tickets other instances opened meanwhile.
KEEP = 2.0  # seconds


class Blobs(Protocol):
    """What a transaction knows of attachment bytes: stored, or being stored by it (not written yet)."""

    def known(self, sha256: str) -> bool: ...
    def adding(self, sha256: str, data: bytes) -> None: ...


class TicketIds:
    """Where new tickets' ids come from: known before a ticket is written (its confirmation is composed with
    it), so a batch of new tickets is written in one statement (mailbot.store.batch).

    PostgreSQL: the column's sequence, drawn `wanted` ids at a time (the tickets a batch may still open,
    mailbot.facts): one round trip for a batch's tickets rather than one each, the intake's busiest wait
    (bench/RESULTS.md, section 16). Ids a batch left serve the batches that follow within KEEP seconds, in
    order, so one instance numbers its tickets in the order their mail arrived. Like any sequence value, an
    id drawn by a transaction that rolls back, or left when KEEP ends or the process stops, is never used:
    ticket numbers may skip, never repeat. One object per process, shared by its transactions.

    SQLite: one past `after`, the id the caller allocated last in this transaction, else past the highest
    id stored; the transaction holds SQLite's write lock (BEGIN IMMEDIATE), so no other writer can take it
    meanwhile: no gaps."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._drawn: deque[int] = deque()
        self._drawn_at = 0.0
        self._lock = threading.Lock()

    def next(self, session: Session, after: int | None, wanted: int = 1) -> int:
        connection = session.connection()  # plain values: not the ORM's execute path
        if connection.dialect.name != "postgresql":
            return (after if after is not None else connection.scalar(_LAST_ID) or 0) + 1
        with self._lock:
            if self._drawn and self._clock() - self._drawn_at > KEEP:
                self._drawn.clear()
            if not self._drawn:
                self._drawn.extend(sorted(connection.scalars(_DRAW_POSTGRESQL, {"n": max(wanted, 1)})))
                self._drawn_at = self._clock()
            return self._drawn.popleft()


def add_message(
    session: Session,
    ticket: Ticket,
    *,
    direction: str,
    kind: str,
    message_id: str,
    from_address: str,
    from_name: str = "",
    to: Sequence[str] = (),
    cc: Sequence[str] = (),
    subject: str,
    at: datetime,
    text: str,
    quoted: str = "",
    inbound_id: int | None = None,
    attachments: Sequence[ParsedAttachment] = (),
    identity: str | None = None,
    blobs: Blobs | None = None,
) -> TicketMessage:
    """`identity`: what makes a received message the same one (mailbot.identity); ours are their Message-ID.
    `blobs`: which attachments are stored or being stored (mailbot.facts); without it, each is looked up."""
    message = fresh(
        TicketMessage,
        direction=direction,
        kind=kind,
        message_id=message_id,
        identity=identity or message_id,
        inbound_id=inbound_id,
        from_address=from_address,
        from_name=from_name,
        to=list(to),
        cc=list(cc),
        subject=subject,
        at=at,
        text=text,
        quoted=quoted,
    )
    _append(ticket, "messages", message)
    for parsed in attachments:
        known = blobs.known(parsed.sha256) if blobs is not None else session.get(Blob, parsed.sha256) is not None
        if not known:
            session.add(fresh(Blob, sha256=parsed.sha256, size=parsed.size, data=parsed.data))
            if blobs is not None:
                blobs.adding(parsed.sha256, parsed.data)
        attachment = fresh(
            Attachment,
            filename=parsed.filename,
            content_type=parsed.content_type,
            size=parsed.size,
            sha256=parsed.sha256,
            inline=parsed.inline,
        )
        _append(message, "attachments", attachment)
    ticket.updated_at = at
    return message


def _append(parent: Base, collection: str, child: Base) -> None:
    """`child` added to `parent`'s `collection`. A parent no session holds (a ticket the intake's batch
    opened, mailbot.facts, and its messages) is written by the batch's own write, which reads its
    collections as they stand (mailbot.store.batch): a plain list append then, without the attribute events
    (the backref, the cascade into a session) that cost a third of storing a message (bench/RESULTS.md,
    13.D). Any other parent's append is the session's to write."""
    if not inspect(parent).transient:
        getattr(parent, collection).append(child)
    elif (items := parent.__dict__.get(collection)) is not None:
        list.append(items, child)
    else:  # an empty collection is kept out of the object's values until its first evented append
        set_committed_value(parent, collection, [child])


def stored_blobs(session: Session, sha256s: Collection[str]) -> set[str]:
    """Which of these attachment hashes have their bytes stored."""
    found: set[str] = set()
    for some in chunks(sha256s):
        found.update(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(some))))
    return found


_WITH_MESSAGES = selectinload(Ticket.messages).selectinload(TicketMessage.attachments)


def get(session: Session, ticket_id: int) -> Ticket | None:
    return session.get(Ticket, ticket_id, options=[_WITH_MESSAGES])


def many(session: Session, ticket_ids: Collection[int]) -> list[Ticket]:
    """The tickets of `ticket_ids` that exist, each as `get` gives it, in one statement per chunk."""
    found: list[Ticket] = []
    for some in chunks(set(ticket_ids)):
        statement = select(Ticket).where(Ticket.id.in_(some))
        found.extend(session.scalars(statement.options(_WITH_MESSAGES)))
    return found


def listing(session: Session, status: str | None = None, *, breached: bool = False) -> list[Ticket]:
    """Tickets by id; `breached`: only those with an SLA finding on record (missed or at risk)."""
    statement = select(Ticket).order_by(Ticket.id)
    if status is not None:
        statement = statement.where(Ticket.status == status)
    if breached:
        statement = statement.where(Ticket.sla_breach.is_not(None))
    return list(session.scalars(statement))


def specialist_address(session: Session, specialist_id: int | None) -> str | None:
    """Through the session's identity map: the caller's next `session.get` of the specialist costs nothing."""
    specialist = session.get(Specialist, specialist_id) if specialist_id is not None else None
    return specialist.address if specialist is not None else None


def blobs(session: Session, sha256s: Collection[str]) -> dict[str, bytes]:
    """Attachment bytes by content hash, as stored."""
    found: dict[str, bytes] = {}
    for some in chunks(set(sha256s)):
        rows = session.execute(select(Blob.sha256, Blob.data).where(Blob.sha256.in_(some)))
        found.update({sha256: data for sha256, data in rows})
    return found


OPENING_HEAD = 16_384  # bytes of the opening message read for one header field: its header block, or most of it


def opening_head(session: Session, ticket: Ticket) -> bytes | None:
    """The first bytes of the stored message that opened `ticket` (not all of it: it may be megabytes)."""
    first = next((m for m in ticket.messages if m.direction == "in" and m.inbound_id is not None), None)
    if first is None:
        return None
    with session.no_autoflush:  # the stored message is written already; a batch is written in one flush
        head = session.scalar(
            select(func.substr(InboundMessage.raw, 1, OPENING_HEAD)).where(InboundMessage.id == first.inbound_id)
        )
    return bytes(head) if head is not None else None

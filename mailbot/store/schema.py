"""The tables. Every instant is stored in UTC and read back timezone-aware, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.orm.instrumentation import manager_of_class


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store; pass an aware instant")
    return value.astimezone(UTC)


def naive_utc(value: datetime | None) -> datetime | None:
    """An aware instant as the store keeps it: naive UTC."""
    return None if value is None else _utc(value).replace(tzinfo=None)


# SQLAlchemy's SQLite DATETIME stores this text (its default storage format), which isoformat writes too.
_SQLITE_TEXT = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"


@functools.lru_cache(maxsize=256)  # an intake batch binds the same few instants (its `now`) many times a message
def _sqlite_text(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat(" ", "microseconds")[:26]  # without "+00:00"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out (SQLite keeps no offset, so we store naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return naive_utc(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        """`process_bind_param` and the column type's own step as one function: the intake binds about 14
        instants a message, and the two steps chained cost twice as much (bench/RESULTS.md, 13.D). The
        same values: on PostgreSQL the driver takes the datetime itself; on SQLite, the text SQLAlchemy's
        DATETIME writes (tests/test_store.py compares them)."""
        inner = self.impl_instance.dialect_impl(dialect)
        if inner.bind_processor(dialect) is None:
            return naive_utc
        if getattr(inner, "_storage_format", None) == _SQLITE_TEXT:
            return _sqlite_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, dict[str, Any]: JSON, list[str]: JSON}


Row = TypeVar("Row", bound=Base)


def fresh(cls: type[Row], **columns: Any) -> Row:
    """A new object of `cls` with these column values, as its constructor makes it (transient; an unset
    column takes its default when written) but without the constructor's instrumented set of each
    attribute: the intake builds several rows a message, and that was a tenth of its CPU (bench/RESULTS.md,
    13.D). Columns only: relationships are set through their attributes, which keep their events."""
    row: Row = manager_of_class(cls).new_instance()
    row.__dict__.update(columns)
    return row


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    product: Mapped[str] = mapped_column(String(20))
    plan: Mapped[str] = mapped_column(String(20))
    valid_from: Mapped[date | None] = mapped_column(Date)
    valid_until: Mapped[date | None] = mapped_column(Date)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class School(Base):
    __tablename__ = "schools"
    __table_args__ = (UniqueConstraint("organization_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)  # normalized (mailbot.addresses)
    name: Mapped[str] = mapped_column(String(200), default="")
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    school_id: Mapped[int | None] = mapped_column(ForeignKey("schools.id", ondelete="CASCADE"))
    bounces: Mapped[int] = mapped_column(Integer, default=0)
    bouncing: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class Specialist(Base):
    __tablename__ = "specialists"
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # False: away, skipped by auto-assignment
    last_assigned_at: Mapped[datetime | None]
    # Where their latest assignment stands in the team's sequence (0: never): round-robin order (assignment.py),
    # exact even when several tickets are assigned in the same instant.
    last_turn: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime]


class InboundMessage(Base):
    """Every message accepted by any door, raw bytes first: the durable truth the pipeline works from."""

    __tablename__ = "inbound_messages"
    __table_args__ = (Index("ix_inbound_status_id", "status", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(200))  # "smtp", "lmtp", "imap:<mailbox>", "cli"
    envelope_from: Mapped[str | None] = mapped_column(String(998))
    envelope_to: Mapped[list[str]] = mapped_column(default=list)
    size: Mapped[int] = mapped_column(Integer)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    # pending -> processed | failed (parse or pipeline error; `mailbot` retries it on request)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    action: Mapped[str | None] = mapped_column(String(20))  # created | threaded | held | duplicate | ignored | bounce
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(100))  # the instance processing it (mailbot.leases)
    claimed_until: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    peer: Mapped[str | None] = mapped_column(String(100))  # the SMTP/LMTP client's IP address
    # Its Message-ID was already used by a different message (mailbot.identity): who used it, for operators.
    collision: Mapped[str | None] = mapped_column(Text)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"))
    # The decision trail (mailbot.trail): each rule the intake ran, its verdict, why, how long; written with
    # the outcome. Deferred: loaded only by `inbound show`, never by the runner's claim.
    trail: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, deferred=True)

    # Many-to-one links that are never loaded (lazy="raise"); they make a flush write a new ticket before the
    # rows that name it, as the intake flushes a whole batch at once (mailbot.processor).
    ticket: Mapped[Ticket | None] = relationship(lazy="raise")


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (Index("ix_tickets_status", "status"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20))  # new | open | held | resolved
    held_reason: Mapped[str | None] = mapped_column(String(60))
    held_detail: Mapped[str | None] = mapped_column(Text)
    # The entitlement decision when the ticket was opened ("entitled" or a held reason), kept after a
    # release, and how the sender was (or was not) authenticated.
    entitlement: Mapped[str | None] = mapped_column(String(60))
    sender_auth: Mapped[str | None] = mapped_column(Text)
    released_at: Mapped[datetime | None]
    subject: Mapped[str] = mapped_column(Text, default="")
    requester: Mapped[str] = mapped_column(String(320), index=True)  # automatic mail counted per address
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id", ondelete="SET NULL"))
    specialist_id: Mapped[int | None] = mapped_column(ForeignKey("specialists.id", ondelete="SET NULL"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    clock_started_at: Mapped[datetime | None]  # None while held: the promise starts on release
    confirmation_due_at: Mapped[datetime | None]
    confirmation_sent_at: Mapped[datetime | None]
    assign_due_at: Mapped[datetime | None]
    introduction_due_at: Mapped[datetime | None]
    introduction_sent_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    sla_breach: Mapped[str | None] = mapped_column(Text)
    sla_breached_at: Mapped[datetime | None]
    auto_reply_refused: Mapped[str | None] = mapped_column(Text)  # why no confirmation/explanation (mailbot.loops)
    # The Thread-Index header block of the customer's first message (mailbot.workflow.thread_of), read when the
    # ticket is opened: empty when their client wrote none, NULL on tickets opened before it was kept.
    customer_thread_index: Mapped[bytes | None] = mapped_column(LargeBinary(22))

    messages: Mapped[list[TicketMessage]] = relationship(
        back_populates="ticket", order_by="TicketMessage.id", cascade="all, delete-orphan"
    )


class TicketMessage(Base):
    """One message of a ticket's conversation, in or out.

    A Message-ID proves nothing (anyone can write any), so it is not unique here: `identity` is, the dedupe
    guard (mailbot.identity: the Message-ID with what the message says and who provably said it).
    """

    __tablename__ = "ticket_messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(3))  # in | out
    kind: Mapped[str] = mapped_column(String(20))  # customer | specialist | confirmation | introduction | ...
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    identity: Mapped[str] = mapped_column(String(1100), unique=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    from_address: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str] = mapped_column(String(200), default="")
    to: Mapped[list[str]] = mapped_column(default=list)
    cc: Mapped[list[str]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime]
    text: Mapped[str] = mapped_column(Text, default="")  # the new text (quoted history split off)
    quoted: Mapped[str] = mapped_column(Text, default="")

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(order_by="Attachment.id", cascade="all, delete-orphan")


class Blob(Base):
    """Attachment bytes, stored once by content hash."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_message_id: Mapped[int] = mapped_column(ForeignKey("ticket_messages.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    inline: Mapped[bool] = mapped_column(Boolean, default=False)

    blob: Mapped[Blob] = relationship(lazy="raise")  # written before its attachments (see InboundMessage.ticket)


class OutboxItem(Base):
    """A message to send: fully rendered when planned, so a retry is the very same message (same Message-ID)."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status_next", "status", "next_attempt_at"),
        # The loop governor's count, from the index alone (mailbot.store.deliveries).
        Index("ix_outbox_recipient_created", "recipient", "created_at", "kind", "status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    envelope_from: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list[str]] = mapped_column()
    recipient: Mapped[str | None] = mapped_column(String(320))  # the first, as mailbot.addresses keys it
    body: Mapped[bytes] = mapped_column(LargeBinary)  # without Date and DKIM-Signature, added at send time
    created_at: Mapped[datetime]
    due_at: Mapped[datetime]  # do not send before
    deadline_at: Mapped[datetime | None]  # the promise: it must be out by then
    # pending | sent | failed | cancelled | withheld (the loop governor kept a promised message back)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    delivery: Mapped[str | None] = mapped_column(String(20))  # None | "bounced" | "delayed"
    delivery_detail: Mapped[str | None] = mapped_column(Text)

    ticket: Mapped[Ticket | None] = relationship(lazy="raise")  # written after its ticket (see InboundMessage)


class ImapCursor(Base):
    __tablename__ = "imap_cursors"
    mailbox: Mapped[str] = mapped_column(String(500), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)  # RFC 3501: a 32-bit unsigned number
    last_uid: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class Setting(Base):
    """Values the site keeps in its database rather than its configuration (the generated reply-token secret),
    so that a fresh install and several instances on one database agree without any set-up."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]

"""Mail mailbot sent, as bounces (mailbot.loops) and the loop governor (mailbot.governor) need it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from mailbot.store import chunks
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket

K = TypeVar("K", str, int)  # an address or a ticket id

# Built once with bound parameters (see mailbot.store.registry).
_BY_MESSAGE_ID = select(OutboxItem).where(OutboxItem.message_id == bindparam("message_id"))
_TO = select(OutboxItem.recipient, OutboxItem.kind, OutboxItem.created_at, OutboxItem.status).where(
    OutboxItem.recipient.in_(bindparam("keys", expanding=True)), OutboxItem.created_at >= bindparam("since")
)
_ON = select(OutboxItem.ticket_id, OutboxItem.kind, OutboxItem.created_at, OutboxItem.status).where(
    OutboxItem.ticket_id.in_(bindparam("keys", expanding=True)), OutboxItem.created_at >= bindparam("since")
)


@dataclass(frozen=True)
class Sent:
    """One message mailbot planned, as the loop governor counts it (mailbot.governor)."""

    kind: str
    at: datetime  # when it was planned
    withheld: bool  # kept back by the governor, never sent


def by_message_id(session: Session, message_id: str) -> OutboxItem | None:
    """The outgoing message with this Message-ID, if mailbot sent (or planned) it."""
    return session.scalar(_BY_MESSAGE_ID, {"message_id": message_id})


def sent_to(session: Session, recipients: Collection[str], since: datetime) -> dict[str, list[Sent]]:
    """The mail planned since `since` to each of `recipients` (keyed as mailbot.addresses.key_of keys them,
    any case or plus form), read in one statement per CHUNK of them (ix_outbox_recipient_created: a range of
    each address's recent rows, whatever its history)."""
    return _sent(session, _TO, recipients, since)

def sent_on(session: Session, ticket_ids: Collection[int], since: datetime) -> dict[int, list[Sent]]:
    """The mail planned since `since` on each of `ticket_ids`."""
    return _sent(session, _ON, ticket_ids, since)


def _sent(session: Session, statement: Any, keys: Collection[K], since: datetime) -> dict[K, list[Sent]]:
    """`statement`'s rows (key, kind, at, status) for `keys`, a CHUNK of keys a statement, grouped by key."""
    found: dict[K, list[Sent]] = {}
    for some in chunks(keys):
        for key, kind, at, status in session.connection().execute(statement, {"keys": some, "since": since}):
            found.setdefault(cast(K, key), []).append(Sent(kind, at, status == "withheld"))
    return found

def opening_message(session: Session, ticket: Ticket) -> InboundMessage | None:
    """The stored raw message that opened `ticket` (its first inbound message), if it is still kept."""
    first = next((m for m in ticket.messages if m.direction == "in" and m.inbound_id is not None), None)
    return session.get(InboundMessage, first.inbound_id) if first is not None else None

"""Mail mailbot sent, as bounces (mailbot.loops) and the loop governor (mailbot.governor) need it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from datetime import datetime

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session

from mailbot.addresses import key_of
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket

# Built once with bound parameters (the intake runs them for every message; see mailbot.store.registry).
_BY_MESSAGE_ID = select(OutboxItem).where(OutboxItem.message_id == bindparam("message_id"))


@functools.cache  # one statement for each of the few fixed sets of kinds the callers ask for
def _to_address(kinds: frozenset[str]) -> Select[int]:
    # ix_outbox_recipient_created: a range of the address's recent rows, whatever its history.
    return (
        select(func.count())
        .select_from(OutboxItem)
        .where(
            OutboxItem.recipient == bindparam("recipient"),
            OutboxItem.created_at >= bindparam("since"),
            OutboxItem.kind.in_(sorted(kinds)),
            OutboxItem.status != "withheld",
        )
    )


@functools.cache
def _on_ticket(kinds: frozenset[str]) -> Select[int]:
    return (
        select(func.count())
        .select_from(OutboxItem)
        .where(
            OutboxItem.ticket_id == bindparam("ticket_id"),
            OutboxItem.kind.in_(sorted(kinds)),
            OutboxItem.created_at >= bindparam("since"),
        )
    )


def by_message_id(session: Session, message_id: str) -> OutboxItem | None:
    """The outgoing message with this Message-ID, if mailbot sent (or planned) it."""
    return session.scalar(_BY_MESSAGE_ID, {"message_id": message_id})


def count_to(session: Session, address: str, kinds: Collection[str], since: datetime) -> int:
    """Messages of `kinds` planned (sent or not, withheld ones aside) to `address` (any case or plus form)
    since `since`."""
    recipient = key_of(address)
    values = {"since": since, "recipient": recipient}
    stored = int(session.connection().scalar(_to_address(frozenset(kinds)), values) or 0)
    return stored + _pending(session, kinds, since, lambda item: item.recipient == recipient)


def count_on_ticket(session: Session, ticket_id: int, kinds: Collection[str], since: datetime) -> int:
    """Messages of `kinds` planned on one ticket since `since`."""
    values = {"ticket_id": ticket_id, "since": since}
    stored = int(session.connection().scalar(_on_ticket(frozenset(kinds)), values) or 0)
    return stored + _pending(session, kinds, since, lambda item: item.ticket_id == ticket_id)


def _pending(
    session: Session, kinds: Collection[str], since: datetime, belongs: Callable[[OutboxItem], bool]
) -> int:
    """Of the counts above, the items planned in this session and not written yet: the intake writes a batch
    in one flush (mailbot.processor), and these counts read the stored rows on the connection, which does
    not flush."""
    with session.no_autoflush:
        return sum(
            1
            for item in list(session.new)
            if isinstance(item, OutboxItem)
            and item.status != "withheld"
            and item.kind in kinds
            and item.created_at >= since
            and belongs(item)
        )


def opening_message(session: Session, ticket: Ticket) -> InboundMessage | None:
    """The stored raw message that opened `ticket` (its first inbound message), if it is still kept."""
    first = next((m for m in ticket.messages if m.direction == "in" and m.inbound_id is not None), None)
    return session.get(InboundMessage, first.inbound_id) if first is not None else None

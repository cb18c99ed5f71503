"""Mail mailbot sent, as bounces (mailbot.loops) and the loop governor (mailbot.governor) need it."""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import BindParameter, Select, bindparam, case, func, literal, select
from sqlalchemy.orm import Session

from mailbot.store import chunks
from mailbot.store.schema import InboundMessage, OutboxItem, Ticket

K = TypeVar("K", str, int)  # an address or a ticket id

# Built once with bound parameters (see mailbot.store.registry).
_BY_MESSAGE_ID = select(OutboxItem).where(OutboxItem.message_id == bindparam("message_id"))


@dataclass(frozen=True)
class Sent:
    """Mail mailbot planned, as the loop governor counts it (mailbot.governor): `count` messages of `kind`
    planned at or after `at` (and before the next instant a count may start at, mailbot.facts)."""

    kind: str
    at: datetime
    withheld: bool  # kept back by the governor, never sent
    count: int = 1


@functools.cache
def _counted(key: str, cuts: int) -> Select[Any]:
    """The rows planned to each of the keys (`recipient` or `ticket_id`) since `cut0`, counted by kind,
    withheld or not, and the latest of the instants `cut0` < `cut1` < ... each was planned at or after: the
    database counts, so a count costs the same whatever an address's history (its rows a range of
    ix_outbox_recipient_created, which holds every column the count reads: on SQLite the table is not read)."""
    column = OutboxItem.recipient if key == "recipient" else OutboxItem.ticket_id
    starts: list[BindParameter[datetime]] = [bindparam(f"cut{i}") for i in range(cuts)]
    whens = [(OutboxItem.created_at >= starts[i], i) for i in range(cuts - 1, 0, -1)]
    latest = case(*whens, else_=0) if whens else literal(0)
    rows = (
        select(
            column.label("key"), OutboxItem.kind, (OutboxItem.status == "withheld").label("withheld"),
            latest.label("cut"),
        )
        .where(column.in_(bindparam("keys", expanding=True)), OutboxItem.created_at >= starts[0])
        .subquery()
    )
    grouped = (rows.c.key, rows.c.kind, rows.c.withheld, rows.c.cut)
    return select(*grouped, func.count()).group_by(*grouped)


def by_message_id(session: Session, message_id: str) -> OutboxItem | None:
    """The outgoing message with this Message-ID, if mailbot sent (or planned) it."""
    return session.scalar(_BY_MESSAGE_ID, {"message_id": message_id})


def sent_to(session: Session, recipients: Collection[str], cuts: Sequence[datetime]) -> dict[str, list[Sent]]:
    """The mail planned since the first of `cuts` (ascending) to each of `recipients` (keyed as
    mailbot.addresses.key_of keys them, any case or plus form), counted as `_counted` says, in one statement
    per CHUNK of them."""
    return _sent(session, "recipient", recipients, cuts)


def sent_on(session: Session, ticket_ids: Collection[int], cuts: Sequence[datetime]) -> dict[int, list[Sent]]:
    """The mail planned since the first of `cuts` on each of `ticket_ids`, counted the same way."""
    return _sent(session, "ticket_id", ticket_ids, cuts)


def _sent(session: Session, key: str, keys: Collection[K], cuts: Sequence[datetime]) -> dict[K, list[Sent]]:
    statement = _counted(key, len(cuts))
    instants = {f"cut{i}": cut for i, cut in enumerate(cuts)}
    found: dict[K, list[Sent]] = {}
    for some in chunks(keys):
        for found_key, kind, withheld, cut, count in session.connection().execute(statement, {"keys": some, **instants}):
            found.setdefault(cast(K, found_key), []).append(Sent(kind, cuts[cut], bool(withheld), count))
    return found


def opening_message(session: Session, ticket: Ticket) -> InboundMessage | None:
    """The stored raw message that opened `ticket` (its first inbound message), if it is still kept."""
    first = next((m for m in ticket.messages if m.direction == "in" and m.inbound_id is not None), None)
    return session.get(InboundMessage, first.inbound_id) if first is not None else None

"""Tickets and their conversation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, exists, select
from sqlalchemy.orm import Session, selectinload

from mailbot.parse import Attachment as ParsedAttachment
from mailbot.store.schema import Attachment, Blob, Specialist, Ticket, TicketMessage

_KNOWN = select(exists().where(TicketMessage.message_id == bindparam("message_id")))  # built once: see registry


def message_id_known(session: Session, message_id: str) -> bool:
    return bool(session.scalar(_KNOWN, {"message_id": message_id}))


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
) -> TicketMessage:
    message = TicketMessage(
        direction=direction,
        kind=kind,
        message_id=message_id,
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
    ticket.messages.append(message)
    for parsed in attachments:
        if session.get(Blob, parsed.sha256) is None:
            session.add(Blob(sha256=parsed.sha256, size=parsed.size, data=parsed.data))
        message.attachments.append(
            Attachment(
                filename=parsed.filename,
                content_type=parsed.content_type,
                size=parsed.size,
                sha256=parsed.sha256,
                inline=parsed.inline,
            )
        )
    ticket.updated_at = at
    return message


def get(session: Session, ticket_id: int) -> Ticket | None:
    return session.get(
        Ticket, ticket_id, options=[selectinload(Ticket.messages).selectinload(TicketMessage.attachments)]
    )


def listing(session: Session, status: str | None = None, *, breached: bool = False) -> list[Ticket]:
    """Tickets by id; `breached`: only those with an SLA finding on record (missed or at risk)."""
    statement = select(Ticket).order_by(Ticket.id)
    if status is not None:
        statement = statement.where(Ticket.status == status)
    if breached:
        statement = statement.where(Ticket.sla_breach.is_not(None))
    return list(session.scalars(statement))


def specialist_address(session: Session, specialist_id: int | None) -> str | None:
    if specialist_id is None:
        return None
    return session.scalar(select(Specialist.address).where(Specialist.id == specialist_id))

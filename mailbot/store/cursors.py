"""Where each IMAP mailbox's UIDVALIDITY and last handled UID survive restarts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from mailbot.store.schema import ImapCursor


def load(session: Session, mailbox: str) -> tuple[int | None, int]:
    cursor = session.get(ImapCursor, mailbox)
    return (None, 0) if cursor is None else (cursor.uidvalidity, cursor.last_uid)


def save(session: Session, mailbox: str, uidvalidity: int, last_uid: int, now: datetime) -> None:
    cursor = session.get(ImapCursor, mailbox)
    if cursor is None:
        session.add(ImapCursor(mailbox=mailbox, uidvalidity=uidvalidity, last_uid=last_uid, updated_at=now))
    else:
        cursor.uidvalidity, cursor.last_uid, cursor.updated_at = uidvalidity, last_uid, now

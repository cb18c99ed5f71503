"""Site settings kept in the database (table `settings`): values every instance must share."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbot.store.schema import Setting


def get_or_create(session: Session, key: str, make: Callable[[], str], now: datetime) -> str:
    """The value of `key`, made and stored by the first caller; every later caller reads that one.

    Two instances starting at once may both try to store one: the primary key lets one win, and the
    other reads the winner's value (the savepoint keeps the loser's transaction usable on PostgreSQL).
    """
    existing = session.get(Setting, key)
    if existing is not None:
        return existing.value
    value = make()
    try:
        with session.begin_nested():
            session.add(Setting(key=key, value=value, created_at=now))
    except IntegrityError:
        pass
    return session.get_one(Setting, key, populate_existing=True).value

"""The claims instances hold on inbound messages and outbox items, taken as a whole (mailbot.leases).

A claim is `claimed_by` (the instance) plus `claimed_until` (its lease) on a pending row. Its holder renews
all of its claims at once while it lives, and gives them back when it stops; a row whose lease ran out is
anyone's again (the claim queries in store.inbound and store.outbox).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, union, update
from sqlalchemy.orm import Session

from mailbot.store.schema import InboundMessage, OutboxItem

CLAIMED = (InboundMessage, OutboxItem)


def renew(session: Session, owner: str, until: datetime) -> int:
    """Every claim `owner` holds now lasts until `until`; how many rows that is."""
    return sum(
        cast(
            CursorResult[Any],
            session.execute(
                update(model)
                .where(model.status == "pending", model.claimed_by == owner, model.claimed_until.is_not(None))
                .values(claimed_until=until)
                .execution_options(synchronize_session=False)
            ),
        ).rowcount
        for model in CLAIMED
    )


def holders(session: Session) -> set[str]:
    """The instances holding a claim on a pending row, whether their lease runs still or not."""
    held = union(
        *(
            select(model.claimed_by).where(
                model.status == "pending", model.claimed_by.is_not(None), model.claimed_until.is_not(None)
            )
            for model in CLAIMED
        )
    )
    return {owner for owner in session.scalars(held) if owner}


def release(session: Session, owners: Collection[str]) -> int:
    """Give back every claim of these instances: their rows are pending and free at once."""
    if not owners:
        return 0
    return sum(
        cast(
            CursorResult[Any],
            session.execute(
                update(model)
                .where(model.status == "pending", model.claimed_by.in_(owners), model.claimed_until.is_not(None))
                .values(claimed_by=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            ),
        ).rowcount
        for model in CLAIMED
    )

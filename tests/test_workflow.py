"""Starting a ticket's clock (mailbot.workflow): its deadlines, and what its confirmation says of them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from mailbot.app import App
from mailbot.clock import FrozenClock
from mailbot.hours import shown


class TestStartClock:
    def test_each_instant_gets_its_own_deadlines(self, make_app: Callable[..., App], clock: FrozenClock) -> None:
        """The tickets of a batch start at one instant and their deadlines are worked out once for it; a
        ticket started at another instant still gets its own, and the mail names its own."""
        app = make_app()
        workflow, sla = app.workflow, app.config.sla
        morning = clock.now()  # Tuesday 10:00 New York time
        evening = morning + timedelta(hours=7, minutes=30)  # 17:30: the introduction is due on Wednesday

        def started(session: Session, now: datetime) -> tuple[datetime | None, datetime | None, object]:
            ticket = workflow.open_ticket(
                session, requester="ana@lincoln.example", requester_name="Ana", subject="x", now=now
            )
            workflow.start_clock(session, ticket, now)
            return ticket.assign_due_at, ticket.introduction_due_at, workflow.context(ticket)["introduction_due"]

        got = [app.db.call(started, now) for now in (morning, morning, evening, morning)]
        expected = [
            (
                workflow.hours.add(now, sla.auto_assign_after),
                due := workflow.hours.add(now, sla.introduction_within),
                shown(due, workflow.hours.zone),
            )
            for now in (morning, morning, evening, morning)
        ]
        assert got == expected
        assert got[0] == got[1] == got[3] != got[2]
        assert got[2][2] == "2026-12-02 11:30 -05:00"

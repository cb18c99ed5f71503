"""The promise's deadlines, judged: what is due, what was missed, what will be. Pure: values in, verdicts out.

The promise (DOMAIN.md): a confirmation within `sla.confirmation_within` of wall time and an introduction to a
named specialist within `sla.introduction_within` of business time; a ticket nobody claimed is assigned at
`sla.auto_assign_after`. A held ticket has no clock until it is released; a resolved one owes nothing more.

A deadline is BREACHED when its message was not sent by then (sent at the very instant counts as in time).
It is AT RISK when it will be missed unless someone acts: nobody is active to take the ticket when it is due
for assignment (or within the margin of its deadline), the relay keeps failing while the deadline is within
the margin, the relay refused the message for good, or the loop governor withheld it (mailbot.governor). A breach follows from the stored times alone, so its
text never changes once it is true; a risk goes away when it is over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from mailbot.hours import shown

RUNNING = ("new", "open")  # the statuses whose tickets still owe the customer something
# How a finding starts in the text recorded on its ticket; `mailbot status` and /metrics count by them.
BREACHED, AT_RISK = "BREACHED", "AT RISK"


@dataclass(frozen=True)
class Delivery:
    """How sending one promised message is going (its outbox row)."""

    status: str  # pending | sent | failed | cancelled | withheld
    last_error: str | None  # for a withheld one: the loop governor's reason

    @property
    def failing(self) -> bool:
        return self.status == "pending" and self.last_error is not None

    @property
    def refused(self) -> bool:
        return self.status == "failed"

    @property
    def withheld(self) -> bool:
        return self.status == "withheld"


@dataclass(frozen=True)
class Promise:
    """One ticket's clock: its deadlines, when each message went out, who has it, how sending goes."""

    status: str
    started_at: datetime | None  # None while held: the clock starts when the ticket is released
    confirmation_due_at: datetime | None
    confirmation_sent_at: datetime | None
    assign_due_at: datetime | None
    introduction_due_at: datetime | None
    introduction_sent_at: datetime | None
    assigned: bool
    confirmation: Delivery | None = None
    introduction: Delivery | None = None

    @property
    def running(self) -> bool:
        return self.status in RUNNING and self.started_at is not None


@dataclass(frozen=True)
class Finding:
    """One deadline missed (breached) or about to be (at risk), with the reason in words."""

    deadline: str  # confirmation | introduction
    breached: bool
    reason: str

    def __str__(self) -> str:
        return f"{BREACHED if self.breached else AT_RISK}: {self.deadline} {self.reason}"


def needs_assignment(promise: Promise, now: datetime) -> bool:
    """Whether nobody claimed the ticket and its automatic assignment is due."""
    return (
        promise.running
        and not promise.assigned
        and promise.assign_due_at is not None
        and promise.assign_due_at <= now
    )


def assess(
    promise: Promise, now: datetime, *, active_specialists: int, margin: timedelta, zone: tzinfo
) -> list[Finding]:
    """Every deadline of `promise` that is breached or at risk at `now`."""
    if not promise.running:
        return []
    findings = []
    if (due := promise.confirmation_due_at) is not None:
        findings += _judge(
            "confirmation", due, promise.confirmation_sent_at, promise.confirmation, now, margin, zone
        )
    if (due := promise.introduction_due_at) is not None:
        judged = _judge(
            "introduction", due, promise.introduction_sent_at, promise.introduction, now, margin, zone
        )
        if not judged and _nobody_to_assign(promise, due, now, active_specialists, margin):
            judged = [
                Finding("introduction", False, f"due {shown(due, zone)}: no active specialist to assign")
            ]
        findings += judged
    return findings


def describe(findings: Sequence[Finding]) -> str | None:
    """The text recorded on the ticket (`sla_breach`), or None when the promise is on track."""
    return "; ".join(str(f) for f in findings) or None


def next_check(promise: Promise, now: datetime, margin: timedelta) -> datetime | None:
    """The next instant after `now` at which the verdict on `promise` may change by time alone."""
    if not promise.running:
        return None
    instants: list[datetime] = []
    for due, sent in (
        (promise.confirmation_due_at, promise.confirmation_sent_at),
        (promise.introduction_due_at, promise.introduction_sent_at),
    ):
        if due is not None and sent is None:
            instants += [due - margin, due]
    if promise.introduction_sent_at is None and not promise.assigned and promise.assign_due_at is not None:
        instants.append(promise.assign_due_at)
    return min((t for t in instants if t > now), default=None)


def column(promise: Promise, recorded: str | None, zone: tzinfo) -> str:
    """The SLA column of `ticket list`: the recorded finding, else "ok", "due ..." or "-" (no clock)."""
    if recorded:
        return recorded
    if promise.introduction_sent_at is not None:
        return "ok"
    if not promise.running or promise.introduction_due_at is None:
        return "-"
    return f"due {shown(promise.introduction_due_at, zone)}"


def _judge(
    deadline: str,
    due: datetime,
    sent: datetime | None,
    delivery: Delivery | None,
    now: datetime,
    margin: timedelta,
    zone: tzinfo,
) -> list[Finding]:
    if (sent is None and now >= due) or (sent is not None and sent > due):
        return [Finding(deadline, True, f"late (due {shown(due, zone)})")]
    if sent is not None or delivery is None:
        return []
    if delivery.refused:
        return [Finding(deadline, False, f"due {shown(due, zone)}: the relay refused it for good")]
    if delivery.withheld:
        return [Finding(deadline, False, f"due {shown(due, zone)}: withheld by the loop governor ({delivery.last_error})")]
    if delivery.failing and due - now <= margin:
        return [Finding(deadline, False, f"due {shown(due, zone)}: the relay keeps failing")]
    return []


def _nobody_to_assign(promise: Promise, due: datetime, now: datetime, active: int, margin: timedelta) -> bool:
    if promise.assigned or promise.introduction_sent_at is not None or active > 0:
        return False
    warn_from = min(promise.assign_due_at or due, due - margin)
    return now >= warn_from

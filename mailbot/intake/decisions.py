"""What the intake's rules decide about one message (mailbot.intake.rules), as values the write carries out
(mailbot.intake.write).

A rule either decides, with one of the `Decision` types below, or passes with what it found (`Found`): the
trail steps so far, and what a later rule or the write needs (a Message-ID collision, the resolved ticket a
new one continues). Every decision carries the `Found` it was made on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from mailbot.bounces import Bounce
from mailbot.held import Held

if TYPE_CHECKING:  # rows the facts read, carried along for the write
    from mailbot.admission import Admission
    from mailbot.store.schema import OutboxItem, Specialist

Note = tuple[str, str, str]  # a trail step as a rule finds it: (step, verdict, detail); mailbot.trail times it


@dataclass(frozen=True)
class Found:
    """What the rules that passed found, in order."""

    notes: tuple[Note, ...] = ()
    collision: str | None = None  # the Message-ID is another message's too (mailbot.identity.collision)
    continues: int | None = None  # the resolved ticket a new one is linked to

    def note(self, step: str, verdict: str, detail: str = "") -> Found:
        return Found((*self.notes, (step, verdict, detail)), self.collision, self.continues)


@dataclass(frozen=True)
class Ignore:
    """No ticket: our own mail coming back, or a bounce (recorded against `item`, the message it reports on)."""

    found: Found
    detail: str
    ticket_id: int | None = None
    bounce: Bounce | None = None
    item: OutboxItem | None = None


@dataclass(frozen=True)
class Duplicate:
    """The same message again: nothing written."""

    found: Found


class Joining(StrEnum):
    """How a follow-up joins its ticket (mailbot.followups carries each out)."""

    REPLY = "reply"  # a participant's: stored, reopens the ticket if `reopen`, notifies its specialist
    SPECIALIST = "specialist"  # the assigned specialist's: commands carried out, else relayed to the customer
    AUTOMATIC = "automatic"  # a participant's automatic mail: stored, nothing else (mailbot.loops rule 3)
    TAKEN = "taken"  # another specialist's `#take`: the ticket is assigned to them, the message stored


@dataclass(frozen=True)
class FollowUp:
    """The message joins ticket `ticket_id`; `detail` says how. A specialist's message is noted on the trail
    by the write, with how it ended (relayed, a command carried out or refused)."""

    found: Found
    ticket_id: int
    joining: Joining
    detail: str
    kind: str = "customer"  # the stored message's kind: customer | specialist
    reopen: bool = False
    taker: Specialist | None = None


@dataclass(frozen=True)
class Refuse:
    """The message named a ticket its sender may not join: a new held ticket, with the attempt in `held`."""

    found: Found
    held: Held


@dataclass(frozen=True)
class Open:
    """A new conversation: a ticket, held for `held` or entitled (`admission`: None when not judged)."""

    found: Found
    held: Held | None
    admission: Admission | None


Decision = Ignore | Duplicate | FollowUp | Refuse | Open

"""What the intake learns from a stored message before it looks at the database: work that needs no
transaction, and may wait on DNS, so the runner does it with none open (mailbot.intake.reading makes it).

Each verdict is worked out once and carried: whether a machine wrote the message (and why), whether it is
a bounce (and what it says), whether it is our own mail coming back, which conversation it claims to
continue (its thread clues). The rules after it (mailbot.intake.rules) only read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mailbot.authn import AuthVerdict
from mailbot.bounces import Bounce
from mailbot.parse import ParsedMessage
from mailbot.threads import Clues
from mailbot.trail import Step


@dataclass(frozen=True)
class Reading:
    parsed: ParsedMessage
    key: str  # its Message-ID, or a hash of its bytes: what threads it and what others may reuse
    verdict: AuthVerdict  # whether its From address is authenticated (admission.Gate.authenticate)
    identity: str  # what makes a message with the same key the same message (mailbot.identity)
    steps: tuple[Step, ...]  # the decision trail so far: reading, authentication (mailbot.trail)
    requester: str  # whom a ticket it opens belongs to: From as shown, else the envelope sender, lowercased
    automatic: str | None  # why a machine wrote it (mailbot.automatic), None for a person's mail
    bounce: Bounce | None  # the delivery report it is (mailbot.bounces), if it is one
    clues: Clues  # the conversation it claims to continue (mailbot.threads)
    own: bool  # our own message coming back (mailbot.loops rule 1: its loop mark is ours)
    received_at: datetime  # when the listener stored it: how long a DNS failure may keep it waiting

    @property
    def sender(self) -> str:
        """Whom it trusts (mailbot.senders): the strict From address, never the lenient one it shows."""
        return self.parsed.author.address if self.parsed.author else ""

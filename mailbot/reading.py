"""What the intake learns from a stored message before it looks at the database (`Intake.read`): work that
needs no transaction, and may wait on DNS, so the runner does it with none open."""

from __future__ import annotations

from dataclasses import dataclass

from mailbot.authn import AuthVerdict
from mailbot.parse import ParsedMessage
from mailbot.trail import Step


@dataclass(frozen=True)
class Reading:
    parsed: ParsedMessage
    key: str  # its Message-ID, or a hash of its bytes: what threads it and what others may reuse
    verdict: AuthVerdict  # whether its From address is authenticated (admission.Gate.authenticate)
    identity: str  # what makes a message with the same key the same message (mailbot.identity)
    steps: tuple[Step, ...] = ()  # the decision trail so far: reading, authentication (mailbot.trail)

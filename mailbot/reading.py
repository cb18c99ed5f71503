"""What the intake learns from a stored message before it looks at the database (`Intake.read`): work that
needs no transaction, and may wait on DNS, so the runner does it with none open."""

from __future__ import annotations

from dataclasses import dataclass

from mailbot.authn import AuthVerdict
from mailbot.parse import ParsedMessage


@dataclass(frozen=True)
class Reading:
    parsed: ParsedMessage
    key: str  # the message's identity: its Message-ID, or a hash of its bytes
    verdict: AuthVerdict  # whether its From address is authenticated (admission.Gate.authenticate)

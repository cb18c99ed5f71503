"""Why a message is held: the one vocabulary of held reasons, whichever rule holds it.

A held ticket waits for a person (`ticket release`); its reason is stored on it (`held_reason`, shown in the
JSON and by `inbound show`), and its detail says the why in a sentence for the support team. The rules that
hold (mailbot.intake.rules, mailbot.entitlement, mailbot.threads) all speak these words, as a `Held` value.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class HeldReason(StrEnum):
    """Why a message is held; the values are stored on the ticket and shown as `held_reason`."""

    # The intake: nobody to answer, or no person wrote it (mailbot.loops rule 3).
    NO_SENDER = "no-sender-address"
    AUTOMATIC = "automatic"
    # Entitlement (mailbot.entitlement), in the order its checks run.
    NOT_AUTHENTICATED = "not-authenticated"
    AUTH_TEMPORARY = "auth-temporarily-unavailable"
    UNKNOWN_SENDER = "unknown-sender"
    ORG_SUSPENDED = "organization-suspended"
    PLAN_NOT_STARTED = "plan-not-started"
    PLAN_EXPIRED = "plan-expired"
    SCHOOL_NOT_ALLOWED = "school-contact-not-allowed"
    OVER_LIMIT = "over-plan-limit"
    # Threading (mailbot.threads): a message that names a ticket its sender may not join.
    NOT_A_PARTICIPANT = "not-a-participant"
    FORGED_TOKEN = "forged-reply-token"
    NO_SPECIALIST_TOKEN = "no-specialist-token"


@dataclass(frozen=True)
class Held:
    """The message is kept as a held ticket for `reason`; `detail` says it in words."""

    reason: HeldReason
    detail: str

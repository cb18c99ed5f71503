"""The intake's first stage: one stored message read, with no database (`read`).

Parse the bytes, authenticate the sender (it may wait on DNS, so a runner does it outside any transaction)
and work out each verdict once: automatic mail, bounce, our own mail coming back, thread clues. The result
is a `Reading` (mailbot.reading, pure), which the rules (mailbot.intake.rules) only read.

A message over the parse limits gets a degraded reading (mailbot.salvage), never a failure: the customer
still gets a ticket. "failed" is left for our own bugs.
"""

from __future__ import annotations

from mailbot.admission import Gate
from mailbot.authn import AuthVerdict
from mailbot.automatic import automatic_reason
from mailbot.followups import Followups
from mailbot.identity import identity
from mailbot.loops import MachineMail
from mailbot.parse import ParseLimits, content_key
from mailbot.reading import Reading
from mailbot.salvage import read as read_message
from mailbot.store.schema import InboundMessage
from mailbot.trail import Trail

__all__ = ["Reading", "read"]


def read(
    inbound: InboundMessage, limits: ParseLimits, *, gate: Gate, followups: Followups, machines: MachineMail
) -> Reading:
    trail = Trail()
    parsed = read_message(inbound.raw, limits)
    # Whom it trusts (mailbot.senders), never the lenient reading shown as the requester.
    sender = parsed.author.address if parsed.author else ""
    requester = (parsed.from_.address if parsed.from_ else inbound.envelope_from or "").lower()
    key = parsed.message_id or content_key(inbound.raw)
    read_as = f"{key} from {sender or '(no trusted sender)'}, subject {parsed.subject!r}"
    if parsed.degraded:
        trail.add("reading", "degraded", f"{read_as}; {parsed.degraded}")
    else:
        trail.add("reading", "parsed", read_as)
    verdict = gate.authenticate(inbound, parsed, sender)
    trail.add("authentication", _auth_verdict(verdict), f"{verdict.method}: {verdict.reason}")
    same = identity(key, parsed, authenticated=verdict.authenticated)
    return Reading(
        parsed,
        key,
        verdict,
        same,
        tuple(trail.steps),
        requester=requester,
        automatic=automatic_reason(parsed.message, inbound.envelope_from),
        bounce=parsed.bounce_report,
        clues=followups.clues(inbound, parsed),
        own=machines.own(parsed),
        received_at=inbound.received_at,
    )


def _auth_verdict(verdict: AuthVerdict) -> str:
    if verdict.authenticated:
        return "pass"
    return "temporary failure" if verdict.temporary else "fail"

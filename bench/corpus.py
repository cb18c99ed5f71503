"""The customers of the benchmarks and their mail.

A message is a plain-text question of about the size asked for, or, for sizes above 10 KB, a short question
with a base64 attachment (what large support mail usually is). Each gets its own Message-ID (so nothing is a
duplicate) and one of `senders` customers as sender; `register_senders` makes them all named contacts, so
every message goes through the whole entitlement step and is entitled. `Template` renders message n by
joining pre-built byte pieces, so a load generator pays almost nothing per message.
"""

from __future__ import annotations

import random
import textwrap
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import Any

from sqlalchemy.orm import Session

from mailbot.app import App
from mailbot.plans import Plan, Product
from mailbot.store import registry

SUPPORT = "herosupport@schoolmint.com"
SENDERS = 100  # distinct customers writing in
CONTACTS_PER_ORG = 4  # Gold's named contacts
# The shipped trial setting: mail submitted over SMTP from 127.0.0.1 is believed to come from its From (no
# DNS in a benchmark). The loop governor's per-address limits are lifted so that every ticket gets its
# confirmation even when a few customers send thousands of messages.
SECURITY: dict[str, Any] = {
    "require_sender_auth": True,
    "trust_local_submission": True,
    "auto_reply_limit": 10**9,
    "contact_mail_limit": 10**9,
}
_PROSE = (
    "Hello, since this morning none of the teachers at our school can log in to the enrollment portal. "
    "They enter their password and the page comes back to the login form without any error message. "
    "We tried two different browsers and cleared the cache, and it happens on the office computers as "
    "well as on phones. Parents have started calling because the registration deadline is on Friday. "
    "Could you please look into it as soon as possible and tell us what we should do in the meantime? "
)


def sender(n: int, senders: int = SENDERS) -> tuple[str, str]:
    """(display name, address) of the customer who writes message n, one of `senders`."""
    k = n % senders
    return f"Teacher {k}", f"teacher{k}@lincoln{k % 10}.example"


def _text(size: int) -> str:
    repeats = max(1, size // len(_PROSE) + 1)
    words = (_PROSE * repeats)[:size].rsplit(" ", 1)[0]
    return textwrap.fill(words, 72) + "\n\nThank you,\nthe school office\n"


def customer_message(n: int, size: int, senders: int = SENDERS) -> bytes:
    """Message n, about `size` bytes on the wire (CRLF line ends)."""
    name, address = sender(n, senders)
    message = EmailMessage()
    message["From"] = f"{name} <{address}>"
    message["To"] = f"Hero Support <{SUPPORT}>"
    message["Subject"] = f"Teachers cannot log in to the portal (case {n % 1000})"
    message["Date"] = "Tue, 01 Dec 2026 10:00:00 -0500"
    message["Message-ID"] = f"<{n:010d}.bench@{address.rpartition('@')[2]}>"
    head = len(message.as_bytes(policy=SMTP_POLICY))
    if size <= 10_000:
        message.set_content(_text(max(80, size - head - 110)))
    else:
        message.set_content(_text(600))
        blob = random.Random(n).randbytes(int((size - head - 1400) * 0.74))
        message.add_attachment(blob, maintype="application", subtype="pdf", filename="screenshot-export.pdf")
    return message.as_bytes(policy=SMTP_POLICY)


class Template:
    """Message bytes for any number n at the cost of a join: built once per size and sender."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pieces = [customer_message(k, size).split(f"{k:010d}".encode(), 1) for k in range(SENDERS)]

    def render(self, n: int) -> bytes:
        before, after = self._pieces[n % SENDERS]
        return b"%s%010d%s" % (before, n, after)

    def mail_from(self, n: int) -> str:
        return sender(n)[1]


def register_senders(app: App, senders: int = SENDERS) -> None:
    """Every sender a named contact: Full Hero organizations on Gold, four contacts each."""
    now = app.clock.now()

    def add(session: Session) -> None:
        for first in range(0, senders, CONTACTS_PER_ORG):
            org = registry.add_org(
                session,
                f"District {first // CONTACTS_PER_ORG}",
                product=Product.FULL,
                plan=Plan.GOLD,
                now=now,
            )
            for k in range(first, min(first + CONTACTS_PER_ORG, senders)):
                name, address = sender(k, senders)
                registry.add_contact(session, address, org=org, name=name, now=now)

    app.db.call(add)

"""Outgoing messages from templates: identity, threading headers, loop marks. Pure: values in, bytes out.

Every message gets its Message-ID here, when it is planned, so a retried send is the same message and a reply
to it threads even before it went out. Headers are built with the stdlib's policy.default, which refuses CR
and LF in a header value; customer text is also flattened to one line first, so nothing a customer writes
(subject, name) can add a header or a recipient.

The stdlib of Python 3.11.7 decodes an RFC 2047 encoded word found in a value it is given and writes the
decoded text out raw (CVE-2024-6923): a subject, name or Message-ID holding `=?utf-8?q?=0D=0ABcc:_x@evil?=`
would come out as a header line of its own. So customer text has its `=?` broken up (`= ?`), a Message-ID
holding one is left out of the threading headers, and every composed message is checked to carry exactly
the header fields it was given (UnsafeHeader otherwise: the composition is refused, nothing is sent).
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP, default
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, select_autoescape

from mailbot.automatic import LOOP_HEADER, loop_mark

# C0 and C1 controls and the Unicode line separators: str.splitlines() breaks a header value at any of them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_ENCODED_WORD_START = "=?"  # RFC 2047 section 2
_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|antw|tr)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


class _RepeatedHeaders:
    """policy.default's header registry, parsing a string value it saw recently only once.

    Every message repeats most of its fields (From, Auto-Submitted, the MIME-Version, Content-Type and
    Content-Transfer-Encoding of its parts), and the registry's pure-Python parser is most of the cost of
    composing. A parsed header is immutable (folding reads its parse tree), so one can serve many messages.
    Bounded: the per-message values (To, Message-ID...) only pass through.
    """

    def __init__(self) -> None:
        self._registry = HeaderRegistry()
        self._parsed = functools.lru_cache(maxsize=256)(self._registry)

    def __call__(self, name: str, value: Any) -> BaseHeader:
        return self._parsed(name, value) if isinstance(value, str) else self._registry(name, value)

    def __getitem__(self, name: str) -> type[BaseHeader]:
        return self._registry[name]  # the policy asks the header class for a field's max_count


class UnsafeHeader(ValueError):
    """A composed message would carry a header field it was not given (see the module docstring)."""


def one_line(text: str, limit: int = 200) -> str:
    """Customer-controlled text made safe for a header: no control characters, no encoded-word start,
    bounded length."""
    return _CONTROL.sub(" ", text).replace(_ENCODED_WORD_START, "= ?").strip()[:limit]


def safe_address(address: Address) -> Address:
    """`address` with its display name made one safe line (the address itself is checked after folding)."""
    return Address(display_name=one_line(address.display_name), username=address.username, domain=address.domain)


def _threadable(message_id: str) -> bool:
    """Whether a Message-ID can go into In-Reply-To/References as is: no whitespace, controls or `=?`."""
    return _ENCODED_WORD_START not in message_id and not any(c.isspace() or c < " " for c in message_id)


def _check_header_fields(message: EmailMessage, data: bytes) -> None:
    """Raise UnsafeHeader unless the header block of `data` has exactly the fields set on `message`."""
    head = data.partition(b"\r\n\r\n")[0]
    written = [
        line.partition(b":")[0].strip().decode("ascii", "replace").lower()
        for line in head.split(b"\r\n")
        if line[:1] not in (b" ", b"\t")
    ]
    if written != [name.lower() for name in message]:
        raise UnsafeHeader(f"composed header fields {written} differ from those set {message.keys()}")


def base_subject(subject: str) -> str:
    """The subject without Re:/Fwd: prefixes (RFC 5256 "base subject", simplified)."""
    return _REPLY_PREFIX.sub("", subject).strip()


def mint_message_id(domain: str) -> str:
    """An unguessable Message-ID (RFC 5322 3.6.4): 144 random bits, so nobody can predict ours."""
    return f"<{secrets.token_urlsafe(18)}@{domain}>"


@dataclass(frozen=True)
class Identity:
    """Who mailbot writes as: the [support] from address."""

    name: str
    address: str

    @classmethod
    def parse(cls, header: str) -> Identity:
        [(name, address)] = getaddresses([header])
        return cls(name=name, address=address.lower())

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def header(self, name: str | None = None) -> Address:
        username, _, domain = self.address.rpartition("@")
        return Address(display_name=one_line(name if name is not None else self.name), username=username, domain=domain)


@dataclass(frozen=True)
class Outgoing:
    """A rendered message ready for the outbox."""

    kind: str
    message_id: str
    envelope_from: str
    recipients: list[str]
    subject: str
    text: str
    body: bytes  # RFC 5322 bytes without Date and DKIM-Signature (added when sent)


@dataclass(frozen=True)
class Thread:
    """Where a message sits in its conversation (RFC 5322 3.6.4)."""

    in_reply_to: str | None = None
    references: Sequence[str] = field(default_factory=tuple)

    @classmethod
    def continuing(cls, ids: Sequence[str], in_reply_to: str | None) -> Thread:
        """A reply's position: References keep the root and the latest 19 ids (RFC 5322 3.6.4 allows
        trimming; some servers refuse very long headers)."""
        return cls(in_reply_to=in_reply_to, references=(*ids[:1], *ids[1:][-19:]))


def ticket_reference(ticket_id: int) -> str:
    """The readable ticket reference carried in subjects."""
    return f"[Ticket #{ticket_id}]"


def ticket_subject(ticket_id: int, subject: str) -> str:
    reference = ticket_reference(ticket_id)
    base = one_line(base_subject(subject).replace(reference, "")) or "Your support request"
    return f"Re: {base} {reference}"


class Composer:
    def __init__(self, templates: Path, identity: Identity, *, loop_secret: bytes) -> None:
        self.identity = identity
        self.loop_secret = loop_secret
        self._env = Environment(
            loader=FileSystemLoader(templates),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )
        self._policy = default.clone(header_factory=_RepeatedHeaders())
        # The default From field as a string, so _RepeatedHeaders parses it once (same text, same parse tree).
        self._from = str(identity.header())

    def compose(
        self,
        kind: str,
        *,
        to: Sequence[Address],
        subject: str,
        thread: Thread,
        context: Mapping[str, Any],
        reply_to: Address | None = None,
        from_name: str | None = None,
        auto_submitted: str = "auto-replied",
        cc: Sequence[Address] = (),
    ) -> Outgoing:
        """Render templates/<kind>.txt (and <kind>.html when present) into a threaded, loop-marked message."""
        values = {"support_name": self.identity.name, "support_address": self.identity.address, **context}
        text = self._env.get_template(f"{kind}.txt").render(values)
        message = EmailMessage(policy=self._policy)
        message["From"] = self._from if from_name is None else self.identity.header(from_name)
        message["To"] = [safe_address(a) for a in to]
        if cc:
            message["Cc"] = [safe_address(a) for a in cc]
        if reply_to is not None:
            message["Reply-To"] = safe_address(reply_to)
        message["Subject"] = one_line(subject, 300)
        message_id = mint_message_id(self.identity.domain)
        message["Message-ID"] = message_id
        if thread.in_reply_to and _threadable(thread.in_reply_to):
            message["In-Reply-To"] = thread.in_reply_to
        references = [r for r in thread.references if _threadable(r)]
        if references:
            message["References"] = " ".join(references)
        # RFC 3834 5: mark what we send as automatic; our own mark lets us recognise it if it comes back.
        message["Auto-Submitted"] = auto_submitted
        message[LOOP_HEADER] = loop_mark(self.loop_secret, message_id)
        message.set_content(text, cte="quoted-printable")
        try:  # cheaper than listing the folder: a template's source is looked up (and cached) by name
            html = self._env.get_template(f"{kind}.html")
        except TemplateNotFound:
            html = None
        if html is not None:
            message.add_alternative(html.render(values), subtype="html")
        body = message.as_bytes(policy=SMTP)
        _check_header_fields(message, body)
        return Outgoing(
            kind=kind,
            message_id=message_id,
            envelope_from=self.identity.address,
            recipients=[a.addr_spec for a in (*to, *cc)],
            subject=str(message["Subject"]),
            text=text,
            body=body,
        )

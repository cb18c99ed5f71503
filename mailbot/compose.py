"""Outgoing messages from templates: identity, threading headers, loop marks. Pure: values in, bytes out.

Every message gets its Message-ID here, when it is planned, so a retried send is the same message and a reply
to it threads even before it went out.

The bytes are laid out here, field by field, from the stdlib's encoders (email.header for RFC 2047 encoded
words and folding, email.utils.formataddr for mailboxes; quoted-printable bodies as quoprimime writes them),
not built as an EmailMessage: the structure is always the same (a text part, and an HTML alternative when the kind has
a template), and the header registry's parser, which an EmailMessage runs on every field it is given, was
most of the cost of processing a message (bench/RESULTS.md). Nothing here decodes what it is given, so an
RFC 2047 encoded word in customer text is never turned into raw CR LF (the stdlib of Python 3.11.7 does
that, CVE-2024-6923); customer text is still flattened to one line with its `=?` broken up (`= ?`), so that
no receiving client decodes it either, a Message-ID holding one is left out of the threading headers, and
every composed message is checked to carry exactly the header fields it was given, none holding a control
character (UnsafeHeader otherwise: the composition is refused, nothing is sent).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.utils import formataddr, getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import quote

import idna
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)
from markupsafe import Markup

from mailbot import richtext
from mailbot.automatic import LOOP_HEADER, loop_mark

# C0 and C1 controls and the Unicode line separators: str.splitlines() breaks a header value at any of them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_ENCODED_WORD_START = "=?"  # RFC 2047 section 2
_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|antw|tr)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


class UnsafeHeader(ValueError):
    """A composed message would carry a header field it was not given (see the module docstring)."""


def one_line(text: str, limit: int = 200) -> str:
    """Customer-controlled text made safe for a header: no control characters, no encoded-word start,
    bounded length."""
    return _CONTROL.sub(" ", text).replace(_ENCODED_WORD_START, "= ?").strip()[:limit]


# What keeps a Message-ID out of In-Reply-To/References: white space (str.isspace's, which `\s` is), a C0
# control, an encoded-word start.
_UNTHREADABLE = re.compile(r"[\s\x00-\x1f]|=\?")


def _threadable(message_id: str) -> bool:
    """Whether a Message-ID can go into In-Reply-To/References as is: no whitespace, controls or `=?`."""
    return _UNTHREADABLE.search(message_id) is None


# RFC 5322 section 2.1.1: lines SHOULD stay within 78 characters; RFC 2045 section 6.7: 76 in a QP body;
# RFC 2047 section 2: an encoded word is at most 75 characters (a line of them is kept within that).
_FOLD_AT = 78
_QP_LINE = 76
_WORDS_LINE = 75
_CRLF = "\r\n"


def _encoded(name: str, text: str) -> str:
    """An unstructured field's value: ASCII folded at spaces, anything else as UTF-8 encoded words."""
    if text.isascii() and len(name) + 2 + len(text) <= _FOLD_AT:
        return text  # what Header gives back for it (tests/test_outgoing.py), without its folding machinery
    charset = "us-ascii" if text.isascii() else "utf-8"
    return Header(text, charset, maxlinelen=_WORDS_LINE, header_name=name).encode(linesep=_CRLF)


def _addr_spec(address: Address) -> str:
    """The address as it goes on the wire: an internationalized domain as its A-labels (RFC 5890).

    A non-ASCII local part has no ASCII form; it is written as UTF-8 (RFC 6532), which only an SMTPUTF8
    relay accepts (it needs SMTPUTF8 for the envelope anyway).
    """
    domain = address.domain
    if not domain.isascii():
        domain = idna.encode(domain, uts46=True).decode("ascii")
    return f"{address.username}@{domain}" if domain else address.username


def _mailboxes(addresses: Sequence[Address]) -> str:
    """A list of mailboxes, display names made one safe line and encoded as needed (RFC 2047 section 8)."""
    return _fold([_mailbox(a) for a in addresses], ",")


def _mailbox(address: Address) -> str:
    """`Name <local@domain>`: an ASCII name quoted as it needs (email.utils.formataddr, given a stand-in for
    the address, which it would refuse when not ASCII), any other as UTF-8 encoded words of at most 75
    characters each (email.header; RFC 2047 sections 2 and 5)."""
    spec, phrase = _addr_spec(address), _phrase(address.display_name)
    return f"{phrase} <{spec}>" if phrase else spec


@functools.lru_cache(maxsize=1024)  # ours (the Reply-To's, every message) and those of frequent writers
def _phrase(display_name: str) -> str:
    """A display name as `_mailbox` writes it ("" for none)."""
    name = one_line(display_name)
    if not name:
        return ""
    if name.isascii():
        return formataddr((name, "_@_")).removesuffix(" <_@_>")
    return Header(name, "utf-8", maxlinelen=_WORDS_LINE).encode(linesep=_CRLF)


def _fold(tokens: Sequence[str], separator: str) -> str:
    """Tokens on one line while it stays short, else one a line (RFC 5322 section 2.2.3)."""
    line = f"{separator} ".join(tokens)
    return line if len(line) <= _FOLD_AT - len("In-Reply-To: ") else f"{separator}{_CRLF} ".join(tokens)


Fields = list[tuple[str, str]]


def _text_part(text: str, subtype: str) -> tuple[Fields, str]:
    """A UTF-8 text entity, quoted-printable (long template lines need soft breaks; RFC 2045 section 6.7)."""
    lines = text.encode("utf-8").splitlines()
    fields = [("Content-Type", f'text/{subtype}; charset="utf-8"'), ("Content-Transfer-Encoding", "quoted-printable")]
    return fields, _quoted_printable(lines)


# The octets a quoted-printable body keeps as they are, `=` aside (RFC 2045 section 6.7 rules 1 and 2), in text
# whose lines end in LF.
_QP_LITERAL = bytes(range(0x20, 0x7F)) + b"\t\n"
# quoprimime's table for body text, but for `=`, which is replaced before: str.translate stays on its fast path
# (every character mapped to one ASCII character) until the first 8-bit octet.
_QP_TABLE = [chr(octet) if octet in _QP_LITERAL else f"={octet:02X}" for octet in range(256)]


def _quoted_printable(lines: list[bytes]) -> str:
    """quoprimime.body_encode's text for these lines (as bytes.splitlines gives them), each ended by CRLF, at
    a fraction of its cost.

    body_encode translates the text through its table, one Python lookup per character from the first `=`
    on, and HTML has one in its first attribute: that was most of what composing a message cost. Here `=`
    is replaced in one pass and the table is used only when another octet needs escaping; only the lines
    left too long or ending in white space go through its wrapping (`_wrapped`)."""
    data = b"\n".join(lines)
    text = data.decode("latin-1").replace("=", "=3D")
    if data.translate(None, _QP_LITERAL):  # something to escape besides `=`
        text = text.translate(_QP_TABLE)
    split = text.split("\n")
    if max(map(len, split)) > _QP_LINE or " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        split = [
            line if len(line) <= _QP_LINE and not line.endswith((" ", "\t")) else _wrapped(line) for line in split
        ]
    return _CRLF.join(split) + _CRLF


@functools.lru_cache(maxsize=1024)  # a template's long lines come back in every message it composes
def _wrapped(line: str) -> str:
    """An escaped line as body_encode wraps it (Python 3.11's email.quoprimime, the same steps): soft breaks
    never inside an `=XX`, and white space at its end escaped (RFC 2045 section 6.7 rules 3 and 5)."""
    pieces = []
    start, last_start = 0, len(line) - 1 - _QP_LINE
    while start <= last_start:
        stop = start + _QP_LINE - 1
        if line[stop - 2] == "=":
            pieces.append(line[start : stop - 1])
            start = stop - 2
        elif line[stop - 1] == "=":
            pieces.append(line[start:stop])
            start = stop - 1
        else:
            pieces.append(line[start:stop] + "=")
            start = stop
    if line and line[-1] in " \t":
        room, quoted = start - last_start, f"={ord(line[-1]):02X}"
        end = quoted if room >= 3 else line[-1] + "=" + _CRLF if room == 2 else "=" + _CRLF + quoted
        pieces.append(line[start:-1] + end)
    else:
        pieces.append(line[start:])
    return _CRLF.join(pieces)


def _entity(fields: Fields, body: str) -> str:
    return "".join(f"{name}: {value}{_CRLF}" for name, value in fields) + _CRLF + body


def _multipart(subtype: str, parts: Sequence[str]) -> tuple[Fields, str]:
    # 144 random bits: no template, customer text or attachment can contain it (RFC 2046 section 5.1.1).
    boundary = f"=_{secrets.token_urlsafe(18)}"
    body = "".join(f"--{boundary}{_CRLF}{part}{_CRLF}" for part in parts) + f"--{boundary}--{_CRLF}"
    return [("Content-Type", f'multipart/{subtype};{_CRLF} boundary="{boundary}"')], body


def _body(text: str, html: str | None, files: Sequence[File] = ()) -> tuple[Fields, str]:
    """The MIME fields of the message and its body: the text alone, or text and HTML as alternatives; with
    files, that and one part per file in a multipart/mixed (RFC 2046 section 5.1.3)."""
    content = _text_part(text, "plain") if html is None else _multipart(
        "alternative", (_entity(*_text_part(text, "plain")), _entity(*_text_part(html, "html")))
    )
    if files:
        content = _multipart("mixed", (_entity(*content), *(_entity(*_file_part(f)) for f in files)))
    return [("MIME-Version", "1.0"), *content[0]], content[1]


_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_PARAMETER_CHUNK = 60  # characters of a percent-encoded value per RFC 2231 continuation line


@dataclass(frozen=True)
class File:
    """An attachment of an outgoing message. The name and type come from someone's mail: made safe here."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


def _file_part(file: File) -> tuple[Fields, str]:
    """A base64 part whose name survives every client: an ASCII name as is; any other as RFC 2231
    `filename*` in continuations of bounded length, with an ASCII stand-in as the type's `name` (what clients
    without RFC 2231 show)."""
    media = file.content_type.lower()
    media = media if _MEDIA_TYPE.fullmatch(media) else "application/octet-stream"
    name = _CONTROL.sub(" ", file.filename).strip()[:255] or "attachment"
    fallback = "".join(c if c.isascii() and c not in '"\\' else "_" for c in name)
    disposition = f'attachment; filename="{fallback}"'
    if fallback != name:  # RFC 2231 alone: a client that sees a plain filename too may prefer it (Python does)
        chunks = ["utf-8''"]
        for character in name:  # a chunk ends between characters, never inside one's %XX escapes
            piece = quote(character, safe="")
            if len(chunks[-1]) + len(piece) > _PARAMETER_CHUNK:
                chunks.append("")
            chunks[-1] += piece
        disposition = "attachment" + "".join(f";{_CRLF} filename*{n}*={chunk}" for n, chunk in enumerate(chunks))
    fields = [
        ("Content-Type", f'{media}; name="{fallback}"'),
        ("Content-Disposition", disposition),
        ("Content-Transfer-Encoding", "base64"),
    ]
    encoded_data = base64.encodebytes(file.data).decode("ascii").replace("\n", _CRLF)  # 76-character lines
    return fields, encoded_data


def _serialize(fields: Fields, body: str) -> bytes:
    """The message's bytes; UnsafeHeader when a field value would hold a line break or control of its own."""
    # All values in one search ("x" between them: no fold can span two); the field is named only on failure.
    if _CONTROL.search("x".join(value for _, value in fields).replace(f"{_CRLF} ", " ")):
        name, value = next((n, v) for n, v in fields if _CONTROL.search(v.replace(f"{_CRLF} ", " ")))
        raise UnsafeHeader(f"the {name} field would hold a control character: {value!r}")
    data = _entity(fields, body).encode()
    _check_header_fields([name for name, _ in fields], data)
    return data


def _check_header_fields(names: Sequence[str], data: bytes) -> None:
    """Raise UnsafeHeader unless the header block of `data` has exactly the fields `names`."""
    head = data.partition(b"\r\n\r\n")[0]
    # Compared as bytes (the names are ours, ASCII), decoded for the message only.
    written = [line.partition(b":")[0].strip().lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
    if written != [name.lower().encode() for name in names]:
        shown = [name.decode("ascii", "replace") for name in written]
        raise UnsafeHeader(f"composed header fields {shown} differ from those set {list(names)}")


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
    topic: str | None = None  # Outlook's Thread-Topic: the subject without its reply prefixes
    index: str | None = None  # Outlook's Thread-Index (thread_index)

    @classmethod
    def continuing(
        cls, ids: Sequence[str], in_reply_to: str | None, *, topic: str | None = None, index: str | None = None
    ) -> Thread:
        """A reply's position: References keep the root and the latest 19 ids (RFC 5322 3.6.4 allows
        trimming; some servers refuse very long headers)."""
        return cls(in_reply_to=in_reply_to, references=(*ids[:1], *ids[1:][-19:]), topic=topic, index=index)


_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def _filetime(instant: datetime) -> int:
    """100-nanosecond intervals since 1601 (Windows FILETIME)."""
    delta = instant - _FILETIME_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


_INDEX_HEADER = 22  # bytes: reserved 0x01, 40 bits of FILETIME, a 16-byte GUID
_INDEX_LEVEL = 5


def thread_index_header(value: str) -> bytes | None:
    """The conversation header block of a Thread-Index someone else wrote (an Outlook customer's first
    message), or None when `value` is not one."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        return None
    well_formed = len(raw) >= _INDEX_HEADER and (len(raw) - _INDEX_HEADER) % _INDEX_LEVEL == 0 and raw[0] == 1
    return raw[:_INDEX_HEADER] if well_formed else None


def thread_index(conversation: str, started: datetime, at: datetime, *, header: bytes | None = None) -> str:
    """Outlook's Thread-Index for a message of `conversation` written at `at` ([MS-OXOMSG] 2.2.1.3).

    Outlook groups a conversation by this value's header block (a time and a GUID); each reply appends a
    5-byte response level. `header`: the block of the thread's first message when its client wrote one (the
    customer's Outlook), so our replies join that conversation. Otherwise the GUID is derived from
    `conversation` (any stable name of the thread), so every message of one thread carries the same header
    block without anything stored, and one response level orders it by time.
    """
    if header is not None:
        start = int.from_bytes(header[1:6], "big") << 24
    else:
        start = _filetime(started) >> 24 << 24  # the header keeps the 40 high bits of the FILETIME
        guid = hashlib.sha256(conversation.encode()).digest()[:16]
        header = b"\x01" + (start >> 24).to_bytes(5, "big") + guid
    delta = max(0, _filetime(at) - start)
    code, bits = (0, delta >> 18) if delta >> 49 == 0 else (1, delta >> 23)  # ~1.7 years fit the fine form
    level = (code << 39) | ((bits & 0x7FFF_FFFF) << 8)  # random and sequence nibbles left 0: deterministic
    return base64.b64encode(header + level.to_bytes(5, "big")).decode("ascii")


def ticket_reference(ticket_id: int) -> str:
    """The readable ticket reference carried in subjects."""
    return f"[Ticket #{ticket_id}]"


def ticket_subject(ticket_id: int, subject: str) -> str:
    reference = ticket_reference(ticket_id)
    base = one_line(base_subject(subject).replace(reference, "")) or "Your support request"
    return f"Re: {base} {reference}"


_Loaded = tuple[Template, dict[str, Any]]  # a template as first looked up, with its globals


class Composer:
    def __init__(self, templates: Path, identity: Identity, *, loop_secret: bytes) -> None:
        self.identity = identity
        self.loop_secret = loop_secret
        self._env = Environment(
            loader=FileSystemLoader(templates),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            auto_reload=False,  # read each template once (a changed one applies from the next start), no stat per use
            cache_size=-1,  # a handful of templates, all kept: a dict instead of an LRU cache's lock per look-up
        )
        self._env.filters["paragraphs"] = lambda text: Markup(richtext.from_text(text))  # plain text in HTML
        self._from = _mailboxes([identity.header()])  # the same on every message
        # Templates as first looked up (a template added or changed applies from the next start, as with
        # auto_reload off), and the kinds that have no HTML one.
        self._loaded: dict[str, _Loaded] = {}
        self._text_only: set[str] = set()

    def check_templates(self) -> list[str]:
        """Each template of the folder that does not compile, one line each (`check-config`, `run`): a typo
        there would otherwise fail every message that needs it, at the intake."""
        problems = []
        for name in self._env.list_templates(extensions=("txt", "html")):
            try:
                self._env.get_template(name)
            except TemplateError as exc:
                line = f" line {exc.lineno}" if isinstance(exc, TemplateSyntaxError) else ""
                problems.append(f"template {name}{line}: {exc.message or type(exc).__name__}")
        return problems

    def _template(self, name: str) -> _Loaded:
        """The template `name` with its globals, looked up once (TemplateNotFound when there is none)."""
        if (found := self._loaded.get(name)) is None:
            template = self._env.get_template(name)
            found = self._loaded[name] = (template, dict(template.globals))
        return found

    def _html(self, kind: str) -> _Loaded | None:
        """The HTML template of `kind`, None when it has none (remembered too: a look-up is cheaper than
        listing the folder, a miss costs the loader's file system checks)."""
        if kind in self._text_only:
            return None
        try:
            return self._template(f"{kind}.html")
        except TemplateNotFound:
            self._text_only.add(kind)
            return None

    def _render(self, loaded: _Loaded, values: Mapping[str, Any]) -> str:
        """`template.render(values)` without the copy of the environment's globals through a ChainMap that
        `render` makes on every call (a third of rendering a confirmation's text): they were copied once."""
        template, globals_ = loaded
        context = template.new_context({**globals_, **values}, shared=True)
        try:
            return self._env.concat(template.root_render_func(context))
        except Exception:  # noqa: BLE001 - raised again by handle_exception, as `render` does
            self._env.handle_exception()  # its traceback then points into the template

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
        files: Sequence[File] = (),
    ) -> Outgoing:
        """Render templates/<kind>.txt (and <kind>.html when present) into a threaded, loop-marked message,
        with `files` attached."""
        values = {"support_name": self.identity.name, "support_address": self.identity.address, **context}
        text = self._render(self._template(f"{kind}.txt"), values)
        rich = self._html(kind)
        html = self._render(rich, values) if rich is not None else None
        message_id = mint_message_id(self.identity.domain)
        subject = one_line(subject, 300)
        fields: Fields = [("From", self._from if from_name is None else _mailboxes([self.identity.header(from_name)]))]
        fields.append(("To", _mailboxes(to)))
        if cc:
            fields.append(("Cc", _mailboxes(cc)))
        if reply_to is not None:
            fields.append(("Reply-To", _mailboxes([reply_to])))
        fields += [("Subject", _encoded("Subject", subject)), ("Message-ID", message_id)]
        if thread.in_reply_to and _threadable(thread.in_reply_to):
            fields.append(("In-Reply-To", thread.in_reply_to))
        references = [r for r in thread.references if _threadable(r)]
        if references:
            fields.append(("References", _fold(references, "")))
        if thread.topic:
            fields.append(("Thread-Topic", _encoded("Thread-Topic", one_line(thread.topic, 300))))
        if thread.index:
            fields.append(("Thread-Index", thread.index))
        # RFC 3834 5: mark what we send as automatic; our own mark lets us recognise it if it comes back.
        fields += [("Auto-Submitted", auto_submitted), (LOOP_HEADER, loop_mark(self.loop_secret, message_id))]
        mime, body = _body(text, html, files)
        return Outgoing(
            kind=kind,
            message_id=message_id,
            envelope_from=self.identity.address,
            recipients=[a.addr_spec for a in (*to, *cc)],
            subject=subject,
            text=text,
            body=_serialize([*fields, *mime], body),
        )

"""Line ends: the one way every reader of a message splits it into lines (issue 12).

RFC 5322 section 2.3 allows CR and LF only together, as CRLF. Readers disagree on anything else: dkimpy
splits lines on CRLF or LF, the standard `email` parser also on a lone CR, Postfix keeps a lone CR inside
the line. So the same bytes can hold one set of header fields for the DKIM verifier and another for the
parser, and a bare CR is enough to forge a sender. mailbot's policy:

- the SMTP/LMTP door refuses DATA holding a bare CR or a bare LF (`bare_newline`), as Postfix's
  `smtpd_forbid_bare_newline = reject` does (550 5.5.2);
- where refusing is impossible (IMAP, `mailbot ingest`, rows stored before), reading `normalise`s first:
  every bare CR and bare LF becomes CRLF, which is how the standard parser already reads them, so the
  parser and the verifier then see the same lines.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re

_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"(?<!\r)\n")


def bare_newline(raw: bytes) -> str | None:
    """"CR" or "LF" when `raw` holds a line end that is not CRLF (the first kind found), else None."""
    if _clean(raw):
        return None
    if _BARE_LF.search(raw):
        return "LF"
    return "CR"


def normalise(raw: bytes) -> bytes:
    """`raw` with every bare CR and bare LF made CRLF; the same bytes (not a copy) when there is none."""
    if _clean(raw):
        return raw
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _clean(raw: bytes) -> bool:
    # Three passes in C: much faster than a regular expression over a large body, and the usual answer.
    crlf = raw.count(b"\r\n")
    return raw.count(b"\r") == crlf and raw.count(b"\n") == crlf

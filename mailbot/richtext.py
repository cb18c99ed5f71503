"""A specialist's reply as HTML fit to relay to a customer: their own words with their formatting (links,
emphasis, lists), the quoted history and signature cut off, nothing active left, no team address in it. Pure.

Mail clients mark where the quoted history and the signature of an HTML reply begin: Gmail's
`gmail_quote`, `gmail_signature` (and the `gmail_signature_prefix` "-- " before it), Outlook's
`divRplyFwdMsg` / `appendonsend`, its `Signature` div and Word's `_MailAutoSig` bookmark, the bordered
"From:" block of Outlook for Windows, Apple Mail's and Thunderbird's `blockquote type="cite"`,
Thunderbird's `moz-cite-prefix` and `moz-signature`, iOS Mail's `AppleMailSignature`, Yahoo's
`yahoo_quoted`. A signature typed by hand is found by its separator, as in plain text (RFC 3676 §4.3,
mailbot.quotes): a line that is only "--" (text of its own between line breaks, not in a table cell)
followed by no more lines than a plain-text signature may have. The HTML is cut at the first such mark
and sanitized by nh3 (the Rust ammonia sanitizer: an allow-list of tags, attributes, URL schemes and style
properties; no script, form, image or style sheet survives); the blank lines the cut leaves at its end go
too. When the plain part had history to cut (mailbot.quotes) but no mark is found in the HTML, the HTML is
not used: the plain text, turned into HTML, is relayed instead, so an unknown client never leaks the
internal notification it quotes.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import unquote

import nh3

from mailbot.quotes import MAX_SIGNATURE_LINES as _MAX_SIGNATURE_LINES

_QUOTE_CLASSES = frozenset(
    {"gmail_quote", "gmail_extra", "gmail_signature", "gmail_signature_prefix", "yahoo_quoted",
     "moz-cite-prefix", "moz-signature", "protonmail_quote"}
)
_QUOTE_IDS = frozenset(
    {"divrplyfwdmsg", "x_divrplyfwdmsg", "appendonsend", "stopspelling", "signature",
     "applemailsignature", "mail-editor-reference-message-container"}
)
_QUOTE_NAMES = frozenset({"_mailautosig"})  # Outlook for Windows (Word) opens its signature with this anchor
# Outlook for Windows: the history opens with a div whose top border it draws in one of these colours.
_OUTLOOK_BORDER = re.compile(r"border-top:\s*solid\s+#(?:e1e1e1|b5c4df)", re.IGNORECASE)

_TAGS = nh3.ALLOWED_TAGS - {"img", "map", "area", "nav", "details", "summary"}
_STYLES = frozenset(
    {"color", "background-color", "font-weight", "font-style", "text-decoration", "text-align",
     "margin-left", "padding-left", "list-style-type"}
)
_ATTRIBUTES = {**{tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}, "*": {"style", "title"}}


# Tags that end a line where they open or close; text between two of them is a line of its own.
_BLOCKS = frozenset(
    {"address", "article", "aside", "blockquote", "br", "center", "dd", "div", "dl", "dt", "footer", "h1", "h2",
     "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot",
     "th", "thead", "tr", "ul"}
)
_SEPARATOR = re.compile(r"[\s\xa0]*--[ \t\xa0]*")


class _FirstMark(HTMLParser):
    """Finds where the first quoted-history or signature mark starts, as (line, column) of its tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: tuple[int, int] | None = None
        self._line: tuple[int, int] | None = None  # where the current line's first tag or text starts
        self._line_text = ""  # the current line's text so far
        self._cells = 0  # open table cells: a "--" there is an empty value, not a separator
        self._separator: tuple[int, int] | None = None  # the last "--" line, while it may open a signature
        self._lines_after = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.found is not None:
            return
        if _is_mark(tag, dict(attrs)):
            self.found = self._separator or self.getpos()
            return
        self._boundary(tag)
        if tag in {"td", "th"}:
            self._cells += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self.found is None:
            self._boundary(tag)
            if tag in {"td", "th"}:
                self._cells = max(self._cells - 1, 0)

    def handle_data(self, data: str) -> None:
        if self.found is None:
            self._line = self._line or self.getpos()
            self._line_text += data

    def close(self) -> None:
        super().close()
        self._boundary("br")
        if self.found is None:
            self.found = self._separator

    def _boundary(self, tag: str) -> None:
        """At a block tag the current line ends: note it when it is a separator, count it when after one."""
        if tag not in _BLOCKS:
            self._line = self._line or self.getpos()  # an inline tag opening the line belongs to it
            return
        if self._line is not None and self._line_text.strip(" \t\r\n\xa0"):
            if _SEPARATOR.fullmatch(self._line_text) and not self._cells:
                self._separator, self._lines_after = self._line, 0
            elif self._separator is not None:
                self._lines_after += 1
                if self._lines_after > _MAX_SIGNATURE_LINES:
                    self._separator = None  # too long for a signature: the "--" separates parts of the text
        self._line, self._line_text = None, ""


def _is_mark(tag: str, attrs: dict[str, str | None]) -> bool:
    classes = set((attrs.get("class") or "").lower().split())
    return bool(
        classes & _QUOTE_CLASSES
        or (attrs.get("id") or "").lower() in _QUOTE_IDS
        or (tag == "a" and (attrs.get("name") or "").lower() in _QUOTE_NAMES)
        or (tag == "blockquote" and (attrs.get("type") or "").lower() == "cite")
        or (tag == "div" and _OUTLOOK_BORDER.search(attrs.get("style") or ""))
    )


def cut_history(source: str) -> tuple[str, bool]:
    """(the HTML before the first quoted-history or signature mark, whether there was one)."""
    finder = _FirstMark()
    finder.feed(source)
    finder.close()
    if finder.found is None:
        return source, False
    line, column = finder.found
    lines = source.splitlines(keepends=True)
    return "".join(lines[: line - 1]) + lines[line - 1][:column], True


def sanitize(source: str, hide: Callable[[str], str]) -> str:
    """nh3's allow-list, then `hide` on everything a reader sees, mailto: targets included (percent-decoded,
    so an encoded address is found too)."""

    def mailto(tag: str, attribute: str, value: str) -> str | None:
        if attribute == "href" and value.lower().startswith("mailto:"):
            return "mailto:" + hide(unquote(value[len("mailto:") :]))
        return value

    cleaned = nh3.clean(
        source,
        tags=set(_TAGS),
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        filter_style_properties=set(_STYLES),
        clean_content_tags={"script", "style", "title", "head"},
        attribute_filter=mailto,  # per call: the team's addresses are the caller's
    )
    return hide(cleaned)


def from_text(text: str) -> str:
    """Plain text as HTML: paragraphs at blank lines, line breaks kept, web addresses made links."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "\n".join(f"<p>{_linked(p).replace(chr(10), '<br>' + chr(10))}</p>" for p in paragraphs)


_URL = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)]")


def _linked(text: str) -> str:
    out, last = [], 0
    for match in _URL.finditer(text):
        out += [html.escape(text[last : match.start()]), f'<a href="{html.escape(match[0])}">{html.escape(match[0])}</a>']
        last = match.end()
    return "".join([*out, html.escape(text[last:])])


# Line breaks and emptied elements a cut leaves at the end ("Thanks<br><br>" above a signature), before the
# closing tags. Only the end is scanned: the pattern is quadratic in the length it scans.
_TRAILING_BLANK = re.compile(r"(?:\s|&nbsp;|<br>|<(\w+)[^>]*>(?:\s|&nbsp;|<br>)*</\1>)+((?:</\w+>\s*)*)$")
_TRIM_WINDOW = 256


def _trimmed(cleaned: str) -> str:
    head, tail = cleaned[:-_TRIM_WINDOW], cleaned[-_TRIM_WINDOW:].strip()
    while (trimmed := _TRAILING_BLANK.sub(r"\2", tail).strip()) != tail:
        tail = trimmed
    return (head + tail).strip()


def relayed(source: str | None, text: str, *, text_had_history: bool, hide: Callable[[str], str]) -> str:
    """The HTML to relay: the specialist's own when its history could be cut as surely as the plain part's,
    else their plain text (already cut and hidden by the caller) as HTML."""
    if source:
        cut, marked = cut_history(source)
        if marked or not text_had_history:
            cleaned = _trimmed(sanitize(cut, hide))
            if re.sub(r"<[^>]*>|&nbsp;|\s", "", cleaned):
                return cleaned
    return from_text(text)

"""A specialist's reply as HTML fit to relay to a customer: their own words with their formatting (links,
emphasis, lists), the quoted history cut off, nothing active left, no team address in it. Pure.

Mail clients mark where the quoted history (and the signature) of an HTML reply begins: Gmail's
`gmail_quote` and `gmail_signature`, Outlook's `divRplyFwdMsg` / `appendonsend` and the bordered "From:"
block of Outlook for Windows, Apple Mail's and Thunderbird's `blockquote type="cite"` and
`moz-cite-prefix`, Yahoo's `yahoo_quoted`. The HTML is cut at the first such mark and then sanitized by
nh3 (the Rust ammonia sanitizer: an allow-list of tags, attributes, URL schemes and style properties; no
script, form, image or style sheet survives). When the plain part had history to cut (mailbot.quotes) but
no mark is found in the HTML, the HTML is not used: the plain text, turned into HTML, is relayed instead,
so an unknown client never leaks the internal notification it quotes.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import unquote

import nh3

_QUOTE_CLASSES = frozenset(
    {"gmail_quote", "gmail_extra", "gmail_signature", "yahoo_quoted", "moz-cite-prefix", "protonmail_quote"}
)
_QUOTE_IDS = frozenset(
    {"divrplyfwdmsg", "x_divrplyfwdmsg", "appendonsend", "stopspelling", "signature",
     "mail-editor-reference-message-container"}
)
# Outlook for Windows: the history opens with a div whose top border it draws in one of these colours.
_OUTLOOK_BORDER = re.compile(r"border-top:\s*solid\s+#(?:e1e1e1|b5c4df)", re.IGNORECASE)

_TAGS = nh3.ALLOWED_TAGS - {"img", "map", "area", "nav", "details", "summary"}
_STYLES = frozenset(
    {"color", "background-color", "font-weight", "font-style", "text-decoration", "text-align",
     "margin-left", "padding-left", "list-style-type"}
)
_ATTRIBUTES = {**{tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}, "*": {"style", "title"}}


class _FirstMark(HTMLParser):
    """Finds where the first quoted-history mark starts, as (line, column) of its tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: tuple[int, int] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.found is None and _is_mark(tag, dict(attrs)):
            self.found = self.getpos()


def _is_mark(tag: str, attrs: dict[str, str | None]) -> bool:
    classes = set((attrs.get("class") or "").lower().split())
    return bool(
        classes & _QUOTE_CLASSES
        or (attrs.get("id") or "").lower() in _QUOTE_IDS
        or (tag == "blockquote" and (attrs.get("type") or "").lower() == "cite")
        or (tag == "div" and _OUTLOOK_BORDER.search(attrs.get("style") or ""))
    )


def cut_history(source: str) -> tuple[str, bool]:
    """(the HTML before the first quoted-history mark, whether there was one)."""
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


def relayed(source: str | None, text: str, *, text_had_history: bool, hide: Callable[[str], str]) -> str:
    """The HTML to relay: the specialist's own when its history could be cut as surely as the plain part's,
    else their plain text (already cut and hidden by the caller) as HTML."""
    if source:
        cut, marked = cut_history(source)
        if marked or not text_had_history:
            cleaned = sanitize(cut, hide).strip()
            if re.sub(r"<[^>]*>|&nbsp;|\s", "", cleaned):
                return cleaned
    return from_text(text)

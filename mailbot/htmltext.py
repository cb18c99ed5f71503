"""HTML mail -> plain text with the separators a plain-text part would have, so both read alike.

inscriptis renders the layout (paragraphs, lists, tables). Two marks that plain-text mail carries and
mailbot.quotes reads to split a reply from its history would be lost on the way: a `<blockquote>`
becomes indented text, and the signature delimiter `-- ` loses its trailing space. Here each blockquote
is rendered with `> ` before every line (nested quotes get `> > `, RFC 3676 §4.5) and a line that is
only `--` is written `-- ` (RFC 3676 §4.3), so an HTML-only reply, its rendering, and the text/plain
alternative of the same reply split the same way.
"""

from __future__ import annotations

import re
import textwrap

from inscriptis import Inscriptis
from lxml.etree import ParserError
from lxml.html import HtmlElement, document_fromstring

_SIGNATURE = re.compile(r"^[ \t]*--[ \t]*$", re.MULTILINE)
_MAX_QUOTES = 200  # blockquotes rendered as quotes; deeper or more are left to inscriptis's indentation


def html_to_text(html: str) -> str:
    """Plain text for an HTML body: inscriptis's layout, quotes marked `> `, the signature delimiter kept."""
    tree = _tree(html)
    if tree is None:
        return ""
    for quote in list(tree.iter("blockquote"))[::-1][:_MAX_QUOTES]:  # innermost first: outer ones requote
        _quote(quote)
    text = textwrap.dedent(Inscriptis(tree).get_text())
    return _SIGNATURE.sub("-- ", text)


def _tree(html: str) -> HtmlElement | None:
    html = html.strip()
    if not html:
        return None
    try:
        return document_fromstring(html)
    except ParserError:
        return document_fromstring("<pre>" + html + "</pre>")


def _quote(element: HtmlElement) -> None:
    """Replace a blockquote by a <pre> of its rendering, each line marked as quoted."""
    tail, element.tail = element.tail, None  # inscriptis would render the text after it as part of it
    inner = textwrap.dedent(Inscriptis(element).get_text()).strip("\n")
    lines = [f"> {line}".rstrip() if line.strip() else ">" for line in inner.split("\n")]
    pre = HtmlElement("\n".join(lines))
    pre.tag = "pre"
    pre.tail = tail
    parent = element.getparent()
    if parent is not None:
        parent.replace(element, pre)

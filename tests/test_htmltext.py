"""mailbot.htmltext: HTML mail rendered with the quote marks and signature delimiter plain text has."""

from __future__ import annotations

from mailbot.htmltext import html_to_text

GMAIL = (
    '<div dir="ltr">Thanks, it works now.<br><br>-- <br><div class="gmail_signature">Ana Diaz</div></div><br>'
    '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Tue, Dec 1, 2026 at 10:00 AM Hero Support '
    "&lt;herosupport@schoolmint.com&gt; wrote:<br></div>"
    '<blockquote class="gmail_quote" style="margin:0 0 0 .8ex;border-left:1px #ccc solid;padding-left:1ex">'
    "Your ticket 15 is under review.<br><blockquote>Earlier &amp; <b>older</b></blockquote>Thanks</blockquote></div>"
)


class TestRendering:
    def test_quotes_are_marked_per_level(self) -> None:
        text = html_to_text(GMAIL)
        assert "> Your ticket 15 is under review.\n> > Earlier & older\n> Thanks" in text

    def test_signature_delimiter_keeps_its_space(self) -> None:
        assert "\n\n-- \n" in html_to_text(GMAIL)

    def test_text_after_a_quote_is_not_quoted(self) -> None:
        assert html_to_text("<blockquote>old</blockquote><p>new answer</p>").strip() == "> old\n\nnew answer"

    def test_layout_is_inscriptis_s(self) -> None:
        assert html_to_text("<ul><li>one</li><li>two</li></ul>") == "* one\n* two"

    def test_empty_and_fragments(self) -> None:
        assert html_to_text("  ") == ""
        assert html_to_text("just text") == "just text"

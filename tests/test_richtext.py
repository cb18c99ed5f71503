"""A specialist's HTML made fit to relay (mailbot.richtext): history cut at each client's mark, sanitized."""

from __future__ import annotations

import pytest

from mailbot.richtext import cut_history, from_text, relayed, sanitize


def hide(text: str) -> str:
    return text.replace("sam@schoolmint.com", "herosupport@schoolmint.com")


NEW = "<p>Please <b>clear the cache</b>.</p>"


class TestHistory:
    @pytest.mark.parametrize(
        ("client", "history"),
        [
            ("gmail", '<div class="gmail_quote"><div>On Tue, Ana wrote:</div><blockquote>old</blockquote></div>'),
            ("gmail signature", '<div class="gmail_signature">Sam Lee | +1 555</div>'),
            ("outlook web", '<hr style="display:inline-block"><div id="divRplyFwdMsg"><b>From:</b> Ana</div>old'),
            ("outlook web, reply", '<div id="appendonsend"></div><hr><div id="divRplyFwdMsg">From: Ana</div>old'),
            ("outlook windows", ('<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0in 0in 0in">'
                                "<p><b>From:</b> Ana</p></div><p>old</p>")),
            ("apple mail", '<div>On 1 Dec 2026, Ana wrote:</div><blockquote type="cite">old</blockquote>'),
            ("thunderbird", ('<div class="moz-cite-prefix">On 01/12/2026 Ana wrote:<br></div>'
                            '<blockquote type="cite">old</blockquote>')),
            ("yahoo", '<div class="yahoo_quoted">On Tuesday, Ana wrote: old</div>'),
        ],
    )
    def test_cut_at_the_clients_mark(self, client: str, history: str) -> None:
        cut, marked = cut_history(f"<html><body><div>{NEW}\n{history}</div></body></html>")
        assert marked and "old" not in cut and "clear the cache" in cut
        assert relayed(f"<div>{NEW}{history}</div>", "x", text_had_history=True, hide=hide).count("old") == 0

    def test_an_ordinary_blockquote_is_kept(self) -> None:
        source = f"{NEW}<blockquote>As the manual says: restart.</blockquote>"
        assert cut_history(source) == (source, False)
        assert "As the manual says" in relayed(source, "x", text_had_history=False, hide=hide)

    def test_unknown_client_with_history_falls_back_to_the_plain_text(self) -> None:
        """The plain part had history, the HTML shows no mark: the HTML is not trusted to be cut."""
        source = f"{NEW}<p>-----Original Message-----<br>From: Hero Support (internal notes)</p>"
        html = relayed(source, "Please clear the cache.", text_had_history=True, hide=hide)
        assert html == "<p>Please clear the cache.</p>"

    def test_empty_html_falls_back_to_the_text(self) -> None:
        assert relayed("<div><br></div>&nbsp;", "Hi", text_had_history=False, hide=hide) == "<p>Hi</p>"


CITED = '<div class="moz-cite-prefix">On 01/12/2026 Ana wrote:<br></div><blockquote type="cite">old</blockquote>'


class TestSignature:
    @pytest.mark.parametrize(
        ("client", "signed"),
        [
            ("thunderbird", f'<div class="moz-signature">-- <br>Sam Lee | Hero Support | 555-0100</div>{CITED}'),
            ("thunderbird, below the quote", f'{CITED}<div class="moz-signature">-- <br>Sam Lee | 555-0100</div>'),
            ("by hand", "<div>-- <br>Sam Lee<br>Hero Support<br>555-0100</div>"),
            ("by hand, no space, in its own paragraph", "<p>--</p><p>Sam Lee</p><p>555-0100</p>"),
            ("by hand, in a span, above the quote", f"<p><span>--&nbsp;</span><br>Sam Lee 555-0100</p>{CITED}"),
            ("gmail", ('<div dir="ltr">Thanks<br clear="all"><br><span class="gmail_signature_prefix">-- </span><br>'
                       '<div dir="ltr" class="gmail_signature" data-smartmail="gmail_signature">Sam Lee | 555-0100'
                       "</div></div>")),
            ("outlook web", '<div id="Signature"><p>Sam Lee</p><p>555-0100</p></div>'),
            ("outlook windows", '<p class="MsoNormal"><a name="_MailAutoSig">Sam Lee</a><br>555-0100</p>'),
            ("ios mail", '<div id="AppleMailSignature" dir="ltr">Sent from my iPhone 555-0100</div>'),
        ],
    )
    def test_cut_at_the_signature(self, client: str, signed: str) -> None:
        html = relayed(f"<div>{NEW}<br>{signed}</div>", "x", text_had_history=True, hide=hide)
        assert "clear the cache" in html
        for gone in ("555-0100", "Sam Lee", "--", "old"):
            assert gone not in html, gone
        assert not html.endswith(("<br></div>", "<p></p>"))  # no blank lines left where the signature was

    @pytest.mark.parametrize(
        ("shape", "source"),
        [
            ("a dash in a sentence", "<p>Press A -- or B.<br>Then -- as before -- wait.</p>"),
            ("dashes after text on the line", "<p>Values:<br>A --<br>B</p>"),
            ("an empty value in a table", "<table><tr><td>Fee</td><td>--</td></tr><tr><td>Tax</td><td>5</td></tr></table>"),
            ("a separator between long parts", "<p>Part one</p><p>--</p>" + "<p>step</p>" * 21),
            ("a longer rule", "<p>Part one</p><p>-----</p><p>Part two</p>"),
        ],
    )
    def test_ordinary_dashes_are_kept(self, shape: str, source: str) -> None:
        assert cut_history(source) == (source, False)
        assert relayed(source, "x", text_had_history=False, hide=hide).count("--") == source.count("--")

    def test_a_short_signature_after_a_long_separated_text_is_still_cut(self) -> None:
        """Only the last "--" line that opens a short end is a signature; an earlier one is text."""
        source = "<p>Part one</p><p>--</p>" + "<p>step</p>" * 21 + "<p>-- <br>Sam Lee</p>"
        cut, marked = cut_history(source)
        assert marked and cut.count("step") == 21 and "Sam Lee" not in cut


class TestSanitize:
    def test_nothing_active_survives(self) -> None:
        dirty = (
            '<p onclick="steal()">Hi <a href="javascript:alert(1)">x</a> <a href="https://ok.example/a">ok</a>'
            '<img src="https://tracker.example/p.gif"><script>alert(1)</script><style>p{}</style>'
            '<iframe src="https://evil.example"></iframe><form><input name="pw"></form>'
            '<span style="color: red; position: fixed; background-image: url(x)">red</span></p>'
        )
        clean = sanitize(dirty, hide)
        for gone in ("onclick", "javascript:", "<img", "<script", "alert(1)", "<style", "<iframe", "<form", "<input",
                     "position", "background-image"):
            assert gone not in clean, gone
        assert 'href="https://ok.example/a"' in clean and "color:red" in clean.replace(" ", "")

    def test_team_addresses_are_hidden_in_text_and_links(self) -> None:
        clean = sanitize('<a href="mailto:sam%40schoolmint.com">sam&#64;schoolmint.com</a>', hide)
        assert "sam" not in clean and clean.count("herosupport@schoolmint.com") == 2


class TestFromText:
    def test_paragraphs_breaks_links_and_escaping(self) -> None:
        html = from_text("Hi <Ana> & co,\nsee https://help.example/a?b=1&c=2.\n\n\nThanks")
        assert html == (
            "<p>Hi &lt;Ana&gt; &amp; co,<br>\nsee "
            '<a href="https://help.example/a?b=1&amp;c=2">https://help.example/a?b=1&amp;c=2</a>.</p>\n'
            "<p>Thanks</p>"
        )

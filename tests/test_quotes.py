"""mailbot.quotes: splitting a follow-up into what was written now and the quoted history below it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailbot.parse import parse
from mailbot.quotes import split_reply

DATA = Path(__file__).parent / "data"


def text_of(name: str) -> str:
    return parse((DATA / name).read_bytes()).text


class TestCorpusReplies:
    """The replies of the parser corpus, end to end."""

    def test_gmail_reply(self) -> None:
        """Gmail: the wrapped attribution line starts the history; the "-- " signature goes with it."""
        new, history = split_reply(text_of("gmail_reply.eml"))
        assert new == "Thanks Jordan, the new file works.\n\nOne more question: can grade levels be blank?"
        assert history.startswith(
            "-- \nSam Lee\nRise Academy\n\nOn Tue, Nov 24, 2026 at 3:10\u202fPM Hero Support"
        )
        assert history.endswith("> Hero Support\n>")

    def test_outlook_reply(self) -> None:
        """Outlook: "-----Original Message-----" and everything below it is history."""
        new, history = split_reply(text_of("outlook_reply.eml"))
        assert new == "Hi Sam,\n\nIt still fails after clearing the cache.\n\nAna Diaz\nLincoln High School"
        assert history.startswith("-----Original Message-----\nFrom: Hero Support")
        assert history.endswith("We received your request and a specialist is reviewing it.")


class TestLibraryPatterns:
    """History headers found by mail-parser-reply's patterns."""

    def test_gmail_attribution(self) -> None:
        """ "On ... wrote:" followed by ">" lines."""
        text = (
            "Thanks, that fixed it.\n\nOn Tue, Nov 24, 2026 at 10:02 AM Hero Support "
            "<herosupport@schoolmint.com> wrote:\n> Hello Ana,\n>\n> We received your request.\n"
        )
        assert split_reply(text) == (
            "Thanks, that fixed it.",
            (
                "On Tue, Nov 24, 2026 at 10:02 AM Hero Support <herosupport@schoolmint.com> wrote:\n"
                "> Hello Ana,\n>\n> We received your request."
            ),
        )

    def test_new_outlook_header_with_rule(self) -> None:
        """Outlook's "____" rule and From/Sent/To/Subject block; CRLF line ends."""
        text = (
            "Please reset it.\r\n\r\nAna Diaz\r\n\r\n________________________________\r\n"
            "From: Hero Support <herosupport@schoolmint.com>\r\nSent: Tuesday, November 24, 2026 10:02 AM\r\n"
            "To: Ana Diaz <ana@school.org>\r\nSubject: Re: [#12] Login broken\r\n\r\nHello Ana,\r\n"
        )
        new, history = split_reply(text)
        assert new == "Please reset it.\n\nAna Diaz"
        assert history.startswith("________________________________\nFrom: Hero Support")

    @pytest.mark.parametrize(
        ("attribution", "quoted"),
        [
            ("Am 24.11.2026 um 10:02 schrieb Hero Support <herosupport@schoolmint.com>:", "> Hallo"),
            (
                "Le mar. 24 nov. 2026 \u00e0 10:02, Hero Support <herosupport@schoolmint.com> a \u00e9crit :",
                "> Bonjour",
            ),
        ],
    )
    def test_german_and_french_attributions(self, attribution: str, quoted: str) -> None:
        """The library knows German and French attribution lines."""
        assert split_reply(f"Danke!\n\n{attribution}\n{quoted}\n") == ("Danke!", f"{attribution}\n{quoted}")

    def test_quoted_attribution_inside_the_history(self) -> None:
        """Apple Mail quotes the attribution too; a "Sent from my" footer above it is signature."""
        text = (
            "Yes please.\n\nSent from my iPhone\n\n> On Nov 24, 2026, at 10:02, Hero Support "
            "<herosupport@schoolmint.com> wrote:\n>\n> Hello\n"
        )
        new, history = split_reply(text)
        assert new == "Yes please."
        assert history.startswith("Sent from my iPhone\n\n> On Nov 24, 2026")


class TestOwnRules:
    """Where the library fails, small rules of our own."""

    def test_signature_delimiter(self) -> None:
        """RFC 3676 §4.3 "-- " starts the signature."""
        assert split_reply("Works now, thanks.\n\n-- \nAna Diaz\nLincoln High School\n") == (
            "Works now, thanks.",
            "-- \nAna Diaz\nLincoln High School",
        )

    def test_thanks_in_mid_message_is_not_a_signature(self) -> None:
        """The library would cut at "Thanks," and lose the rest of the message."""
        text = "Hi,\nThanks, that fixed it.\nBut now the export is broken too.\nSee attached.\n"
        assert split_reply(text) == (text.strip(), "")

    def test_hyphen_lists_are_not_signatures(self) -> None:
        """The library takes "- step" lines for a signature; they are steps."""
        text = "Hello,\nMy login is broken.\n- step one\n- step two\nBest regards,\nAna"
        assert split_reply(text) == (text, "")

    def test_indentation_is_kept(self) -> None:
        """The library strips every line; a pasted stack trace keeps its shape."""
        text = "Error log:\n    at line 3\n    at line 4"
        assert split_reply(text) == (text, "")

    def test_spanish_gmail_attribution(self) -> None:
        """The library's Spanish pattern wants two spaces before "escribi\u00f3"; Gmail writes one."""
        text = (
            "Gracias, ya funciona.\n\nEl mar, 24 nov 2026 a las 10:02, Hero Support "
            "(<herosupport@schoolmint.com>) escribi\u00f3:\n> Hola\n"
        )
        new, history = split_reply(text)
        assert new == "Gracias, ya funciona."
        assert history.startswith("El mar, 24 nov 2026") and history.endswith("> Hola")

    def test_trailing_quote_without_attribution(self) -> None:
        """A ">" block closing the message is history even with no "wrote:" line."""
        assert split_reply("Yes, please do.\n\n> Shall we reset the password?\n> Regards, Jordan\n") == (
            "Yes, please do.",
            "> Shall we reset the password?\n> Regards, Jordan",
        )

    def test_unknown_attribution_line_goes_with_the_quote(self) -> None:
        """A "... wrote:" line no pattern knows, right above the quote, is history; the line before is not."""
        assert split_reply("Thanks!\nSam wrote:\n> hi\n") == ("Thanks!", "Sam wrote:\n> hi")

    def test_interleaved_answers_are_kept(self) -> None:
        """Answers between quoted lines are new text: nothing is cut."""
        text = (
            "On Tue, Nov 24, 2026 Sam <sam@x.org> wrote:\n"
            "> Is it broken on all devices?\nOnly on iPad.\n> Which version?\n17.2"
        )
        assert split_reply(text) == (text, "")

    def test_typed_header_lines_are_not_history(self) -> None:
        """ "To:" and "Subject:" lines a person typed do not open an Outlook header block without "From:"."""
        text = "Please change these:\nTo: all teachers\nSubject: schedule\nThanks"
        assert split_reply(text) == (text, "")

    def test_only_quoted_history(self) -> None:
        """A reply that adds nothing has empty new text."""
        assert split_reply("On Tue, Nov 24, 2026 Sam <sam@x.org> wrote:\n> hi\n") == (
            "",
            "On Tue, Nov 24, 2026 Sam <sam@x.org> wrote:\n> hi",
        )

    def test_no_history(self) -> None:
        """A first message has no history."""
        assert split_reply("Hello,\nMy login is broken.") == ("Hello,\nMy login is broken.", "")
        assert split_reply("") == ("", "")

    def test_hostile_text_is_bounded(self) -> None:
        """200,000 blank lines and a 60,000 character attribution (which the library's patterns take minutes
        over) are kept out of their view; the small ">" rule still splits the text."""
        long_attribution = "On " + "a " * 30_000 + "wrote:"
        text = "Hi\n" + "\n" * 200_000 + long_attribution + "\n> q\n"
        assert split_reply(text) == ("Hi", f"{long_attribution}\n> q")

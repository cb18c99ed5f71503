"""mailbot.flowed: RFC 3676 format=flowed text rejoined into the paragraphs its writer typed."""

from __future__ import annotations

from mailbot.flowed import unflow


class TestUnflow:
    def test_soft_breaks_join(self) -> None:
        assert unflow("one long \nline\nhard\n", delsp=False) == "one long line\nhard\n"

    def test_delsp_drops_the_space_before_the_break(self) -> None:
        assert unflow("Zeugnis\u00fcber \nsicht", delsp=True) == "Zeugnis\u00fcbersicht"

    def test_quote_depth_marks_and_ends_paragraphs(self) -> None:
        text = "> Your ticket is \n> under review.\n>> older \n>> text\nmine"
        assert unflow(text, delsp=False) == "> Your ticket is under review.\n> > older text\nmine"

    def test_signature_delimiter_is_never_flowed(self) -> None:
        assert unflow("Thanks \n-- \nAna", delsp=False) == "Thanks\n-- \nAna"
        assert unflow("Thanks\n-- \nAna", delsp=False) == "Thanks\n-- \nAna"

    def test_space_stuffing_is_removed(self) -> None:
        assert unflow(" From here\n >not a quote", delsp=False) == "From here\n>not a quote"

"""Commands at the top of a specialist's mail (mailbot.commands)."""

from __future__ import annotations

from mailbot.commands import Command, read


def test_commands_then_text() -> None:
    assert read("#resolve\nWe fixed it.\n\nThanks") == ([Command("resolve", "")], "We fixed it.\n\nThanks")
    assert read("\n#Assign kim@schoolmint.com \n\nShe knows it.") == (
        [Command("assign", "kim@schoolmint.com")], "She knows it."
    )
    assert read("#handover kim@schoolmint.com") == ([Command("assign", "kim@schoolmint.com")], "")
    assert read("#take\n#resolve done") == ([Command("take", ""), Command("resolve", "done")], "")


def test_no_command_below_the_text_or_in_words() -> None:
    text = "Hello Ana,\n#resolve"
    assert read(text) == ([], text)
    for text in ("#1 priority for us", "#resolved already?", "# resolve", "#takeover"):
        assert read(text) == ([], text)


def test_resolve_takes_the_rest_of_its_line() -> None:
    """"#resolve Fixed." keeps its words: the follow-up step joins them to the note (mailbot.followups)."""
    assert read("#resolve Fixed on our side.\nThanks") == ([Command("resolve", "Fixed on our side.")], "Thanks")

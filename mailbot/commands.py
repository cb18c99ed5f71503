"""Commands a specialist writes at the top of a mail about a ticket, so a ticket can be worked by email alone
(as Zendesk's mail API and Request Tracker's CommandByMail do). Pure: text in, commands and the rest out.

    #take              I take this ticket (from nobody, or from the colleague who has it)
    #assign EMAIL      hand it over to that colleague (also: #handover EMAIL)
    #resolve           resolve it; the rest of the mail is the note to the customer

Commands are lines starting with `#` and a known word, before any other text; blank lines between them are
fine. A line like "#1 priority" is no command and starts the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMMAND = re.compile(r"#(take|assign|handover|resolve)\b[ \t]*(.*)", re.IGNORECASE)
_ALIASES = {"handover": "assign"}


@dataclass(frozen=True)
class Command:
    verb: str  # take | assign | resolve
    argument: str


def read(text: str) -> tuple[list[Command], str]:
    """(the commands at the top of `text`, the text below them)."""
    lines = text.splitlines()
    commands: list[Command] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        match = _COMMAND.fullmatch(line)
        if match is None and line:
            break
        if match is not None:
            verb = match[1].lower()
            commands.append(Command(_ALIASES.get(verb, verb), match[2].strip()))
        index += 1
    if not commands:
        return [], text
    return commands, "\n".join(lines[index:]).strip("\n")

"""Who gets the next unclaimed ticket: round-robin over the active specialists. Pure: values in, a choice out.

Fair over time: the specialist whose latest assignment (a claim of their own, or an automatic one) lies
furthest back goes first, anyone never assigned before all others, ties by id, so the choice is the same on
every instance. Away specialists are skipped; back again, their latest assignment is the oldest, so they are
first in line once and then take their turn: they are not owed the tickets they missed (a count-based rule
would hand them every new ticket until they caught up).

Turns are positions in the team's sequence of assignments, not instants: several tickets assigned in the same
sweep share one instant, and the order among them must survive to the next sweep.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A specialist as the rotation sees them."""

    id: int
    active: bool
    last_turn: int  # the position of their latest assignment in the team's sequence; 0: never assigned


def choose(team: Iterable[Candidate]) -> Candidate | None:
    """The active specialist whose turn it is, or None when nobody is active."""
    return min((c for c in team if c.active), key=lambda c: (c.last_turn, c.id), default=None)

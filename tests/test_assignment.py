"""Round-robin over the active specialists: pure rules, no database."""

from __future__ import annotations

from collections import Counter

from mailbot.assignment import Candidate, choose


def rotate(team: list[Candidate], tickets: int) -> tuple[list[int], list[Candidate]]:
    """Assign `tickets` tickets one after another as the shell does: the chosen one takes the next turn."""
    picks = []
    for _ in range(tickets):
        chosen = choose(team)
        assert chosen is not None
        turn = max(c.last_turn for c in team) + 1
        team = [Candidate(c.id, c.active, turn) if c.id == chosen.id else c for c in team]
        picks.append(chosen.id)
    return picks, team


class TestChoose:
    def test_never_assigned_first_then_least_recent(self) -> None:
        """Someone who never had a ticket goes before anyone who had one."""
        team = [Candidate(1, True, 5), Candidate(2, True, 0), Candidate(3, True, 3)]
        assert choose(team) == Candidate(2, True, 0)

    def test_least_recent_turn_wins(self) -> None:
        team = [Candidate(1, True, 7), Candidate(2, True, 4), Candidate(3, True, 6)]
        chosen = choose(team)
        assert chosen is not None and chosen.id == 2

    def test_ties_broken_by_id(self) -> None:
        """Deterministic on every instance: equal turns go to the lowest id."""
        team = [Candidate(9, True, 0), Candidate(4, True, 0), Candidate(6, True, 0)]
        chosen = choose(team)
        assert chosen is not None and chosen.id == 4

    def test_away_specialists_are_skipped(self) -> None:
        team = [Candidate(1, False, 0), Candidate(2, True, 9)]
        chosen = choose(team)
        assert chosen is not None and chosen.id == 2

    def test_nobody_active_means_no_choice(self) -> None:
        assert choose([Candidate(1, False, 0), Candidate(2, False, 1)]) is None
        assert choose([]) is None


class TestFairness:
    def test_two_specialists_alternate(self) -> None:
        picks, _ = rotate([Candidate(1, True, 0), Candidate(2, True, 0)], 6)
        assert picks == [1, 2, 1, 2, 1, 2]

    def test_even_shares_over_time(self) -> None:
        """Over many tickets each of three specialists gets the same share, whatever the starting turns."""
        picks, _ = rotate([Candidate(1, True, 4), Candidate(2, True, 0), Candidate(3, True, 9)], 300)
        assert Counter(picks) == {1: 100, 2: 100, 3: 100}

    def test_a_claim_moves_the_claimer_to_the_back(self) -> None:
        """A specialist who just claimed a ticket by hand is not next for an automatic one."""
        team = [Candidate(1, True, 1), Candidate(2, True, 2)]
        team = [Candidate(1, True, 3), team[1]]  # 1 claims a ticket: turn 3
        chosen = choose(team)
        assert chosen is not None and chosen.id == 2

    def test_back_from_away_is_first_once_and_not_owed_the_missed_tickets(self) -> None:
        """While away, the others share the tickets; back, they take one ticket and then their turn."""
        team = [Candidate(1, True, 0), Candidate(2, True, 0), Candidate(3, True, 0)]
        picks, team = rotate(team, 3)
        assert picks == [1, 2, 3]
        team = [Candidate(c.id, c.id != 3, c.last_turn) for c in team]  # 3 goes away
        picks, team = rotate(team, 4)
        assert picks == [1, 2, 1, 2]
        team = [Candidate(c.id, True, c.last_turn) for c in team]  # 3 is back
        picks, _ = rotate(team, 6)
        assert picks == [3, 1, 2, 3, 1, 2]

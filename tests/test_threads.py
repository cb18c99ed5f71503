"""The threading rules: which ticket a message names, and who may join it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailbot.held import HeldReason
from mailbot.threads import (
    Clues,
    Continuation,
    How,
    Match,
    Participants,
    Role,
    admit,
    continuation,
    match,
    participants,
    read_clues,
    refusal_detail,
)
from mailbot.tokens import ReplyTokens, Side

TOKENS = ReplyTokens(b"test secret", ("herosupport@schoolmint.com",))


def clues(
    *,
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    recipients: tuple[str, ...] = ("herosupport@schoolmint.com",),
    subject: str = "Login broken",
) -> Clues:
    return read_clues(
        in_reply_to=in_reply_to, references=references, recipients=recipients, subject=subject, tokens=TOKENS
    )


class TestReadClues:
    def test_in_reply_to_first_then_references_newest_first(self) -> None:
        found = clues(in_reply_to="<c@x>", references=("<a@x>", "<b@x>", "<c@x>"))
        assert found.message_ids == ("<c@x>", "<b@x>", "<a@x>")

    def test_lookups_bounded(self) -> None:
        found = clues(references=tuple(f"<{i}@x>" for i in range(500)))
        assert len(found.message_ids) == 50 and found.message_ids[0] == "<499@x>"

    @pytest.mark.parametrize(
        ("subject", "ticket"),
        [
            ("Re: Login broken [Ticket #12]", 12),
            ("RE: AW: Login broken [ticket # 12]", 12),
            ("Fwd: [Ticket #3] old thing [Ticket #12]", 12),
            ("Ticket 12 is broken", None),
            ("[Ticket #99999999999]", None),
        ],
    )
    def test_subject_reference(self, subject: str, ticket: int | None) -> None:
        assert clues(subject=subject).subject_ticket == ticket

    def test_numbers_beyond_any_ticket_are_not_looked_up(self) -> None:
        assert clues(subject="[Ticket #9999999999]").ticket_ids() == set()

    def test_token_claims_from_recipients(self) -> None:
        found = clues(recipients=("herosupport@schoolmint.com", TOKENS.address(7)))
        assert [(c.ticket_id, c.valid) for c in found.claims] == [(7, True)]
        assert found.ticket_ids() == {7}


class TestMatch:
    def test_message_id_wins_over_token_and_subject(self) -> None:
        found = clues(
            in_reply_to="<ours@schoolmint.com>", recipients=(TOKENS.address(2),), subject="[Ticket #3]"
        )
        assert match(found, owners={"<ours@schoolmint.com>": [1]}, existing={2, 3}) == Match(
            1, How.MESSAGE_ID, "<ours@schoolmint.com>"
        )

    def test_outlook_style_references_only(self) -> None:
        """Outlook sends References without In-Reply-To; the newest known id decides."""
        found = clues(references=("<root@schoolmint.com>", "<unknown@outlook.com>"))
        assert match(found, owners={"<root@schoolmint.com>": [4]}, existing=set()) == Match(
            4, How.MESSAGE_ID, "<root@schoolmint.com>"
        )

    def test_token_when_no_message_id_is_known(self) -> None:
        found = clues(in_reply_to="<lost@x>", recipients=(TOKENS.address(2),), subject="[Ticket #3]")
        result = match(found, owners={}, existing={2, 3})
        assert result is not None and (result.ticket_id, result.how) == (2, How.TOKEN)

    def test_subject_last(self) -> None:
        result = match(clues(subject="Re: Login broken [Ticket #3]"), owners={}, existing={3})
        assert result == Match(3, How.SUBJECT, "[Ticket #3]")

    def test_reference_to_a_missing_ticket_matches_nothing(self) -> None:
        assert (
            match(clues(subject="[Ticket #3]", recipients=(TOKENS.address(3),)), owners={}, existing=set())
            is None
        )

    def test_forged_token_is_a_match_of_last_resort(self) -> None:
        forged = "herosupport+t1-0123456789abcdef@schoolmint.com"
        assert match(clues(recipients=(forged,)), owners={}, existing={1}) == Match(
            1, How.FORGED_TOKEN, forged
        )
        assert match(clues(recipients=(forged,), subject="[Ticket #5]"), owners={}, existing={1, 5}) == Match(
            5, How.SUBJECT, "[Ticket #5]"
        )

    def test_nothing(self) -> None:
        assert match(clues(), owners={}, existing={1}) is None

    def test_a_message_id_several_tickets_use_names_the_senders_own(self) -> None:
        """A Message-ID proves nothing: a stranger who used Ana's first cannot capture her thread, and one who
        copies hers later cannot pull it away; among the tickets using it, the sender's decides."""
        found = clues(references=("<x@lincoln.example>",))
        owners = {"<x@lincoln.example>": [1, 2]}
        assert match(found, owners=owners, existing=set(), joins=lambda t: t == 2) == Match(
            2, How.MESSAGE_ID, "<x@lincoln.example>"
        )
        assert match(found, owners=owners, existing=set(), joins=lambda t: False).ticket_id == 1  # type: ignore[union-attr]

    def test_specialist_token_claims_its_side(self) -> None:
        found = clues(recipients=(TOKENS.address(4, Side.SPECIALIST), TOKENS.address(5)))
        assert found.speaks_for(4) and not found.speaks_for(5)
        assert match(found, owners={}, existing={4, 5}) == Match(4, How.TOKEN, TOKENS.address(4, Side.SPECIALIST))

    def test_customer_token_never_speaks_for_the_specialist(self) -> None:
        """The customer token is on mail anyone may obtain; a mac of one side does not verify on the other."""
        customer = TOKENS.address(4)
        as_specialist = customer.replace("+t4-", "+s4-")
        found = clues(recipients=(customer, as_specialist))
        assert not found.speaks_for(4)
        assert [(c.side, c.valid) for c in found.claims] == [(Side.CUSTOMER, True), (Side.SPECIALIST, False)]


class TestParticipants:
    PEOPLE = participants(
        requester="Ana@Lincoln.example",
        specialist="sam@schoolmint.com",
        messages=[
            ("ana@lincoln.example", ["herosupport@schoolmint.com", "bo@lincoln.example", "eve@evil.example"]),
            ("bo@lincoln.example", ["cy@lincoln.example"]),  # a contact cannot bring others in
        ],
        colleagues=["ana@lincoln.example", "bo@lincoln.example", "cy@lincoln.example", "dee@lincoln.example"],
    )

    def test_derived(self) -> None:
        assert self.PEOPLE == Participants(
            "ana@lincoln.example", "sam@schoolmint.com", frozenset({"bo@lincoln.example"})
        )

    @pytest.mark.parametrize(
        ("sender", "role"),
        [
            ("ANA@lincoln.example", Role.REQUESTER),
            ("ana+school@lincoln.example", Role.REQUESTER),
            ("bo@lincoln.example", Role.CONTACT),
            ("Sam@SchoolMint.com", Role.SPECIALIST),
            ("cy@lincoln.example", None),  # named contact, brought in by someone other than the requester
            ("dee@lincoln.example", None),  # named contact of the organization, never brought in
            ("eve@evil.example", None),  # Cc'd by the requester but not a named contact
            ("garbage", None),
        ],
    )
    def test_roles(self, sender: str, role: Role | None) -> None:
        assert self.PEOPLE.role_of(sender) == role


class TestAdmit:
    PEOPLE = Participants("ana@lincoln.example", "sam@schoolmint.com", frozenset({"bo@lincoln.example"}))
    BY_ID = Match(1, How.MESSAGE_ID, "<x@schoolmint.com>")

    def test_participant_joins(self) -> None:
        assert admit("ana@lincoln.example", self.BY_ID, self.PEOPLE, authenticated=True) is Role.REQUESTER
        sam = admit("sam@schoolmint.com", self.BY_ID, self.PEOPLE, authenticated=True, speaks_for=True)
        assert sam is Role.SPECIALIST

    def test_specialist_needs_the_specialist_token(self) -> None:
        """An authenticated From of the assigned specialist is not enough to speak as the support team."""
        assert (
            admit("sam@schoolmint.com", self.BY_ID, self.PEOPLE, authenticated=True)
            is HeldReason.NO_SPECIALIST_TOKEN
        )
        assert (
            admit("sam@schoolmint.com", self.BY_ID, self.PEOPLE, authenticated=False, speaks_for=True)
            is HeldReason.NOT_AUTHENTICATED
        )

    def test_copied_message_id_grants_nothing(self) -> None:
        assert (
            admit("mallory@evil.example", self.BY_ID, self.PEOPLE, authenticated=True)
            is HeldReason.NOT_A_PARTICIPANT
        )

    def test_forged_from_of_a_participant_refused(self) -> None:
        """The 2024 spoofing reports: a forged From of the requester must not join."""
        assert (
            admit("ana@lincoln.example", self.BY_ID, self.PEOPLE, authenticated=False)
            is HeldReason.NOT_AUTHENTICATED
        )

    def test_forged_token_admits_nobody(self) -> None:
        forged = Match(1, How.FORGED_TOKEN, "herosupport+t1-0@schoolmint.com")
        assert admit("ana@lincoln.example", forged, self.PEOPLE, authenticated=True) is HeldReason.FORGED_TOKEN

    def test_detail_names_the_attempt(self) -> None:
        detail = refusal_detail("mallory@evil.example", self.BY_ID, HeldReason.NOT_A_PARTICIPANT)
        assert detail == (
            "mallory@evil.example tried to join ticket #1 by its Message-ID <x@schoolmint.com>; "
            "the sender is not a participant of that ticket"
        )


class TestContinuation:
    NOW = datetime(2026, 12, 1, 15, tzinfo=UTC)
    WINDOW = timedelta(days=14)

    def test_open_ticket_appends(self) -> None:
        assert continuation("open", None, self.NOW, self.WINDOW) is Continuation.APPEND
        assert continuation("held", None, self.NOW, self.WINDOW) is Continuation.APPEND

    def test_resolved_within_window_reopens(self) -> None:
        assert continuation("resolved", self.NOW - self.WINDOW, self.NOW, self.WINDOW) is Continuation.REOPEN

    def test_resolved_before_window_starts_new(self) -> None:
        resolved = self.NOW - self.WINDOW - timedelta(seconds=1)
        assert continuation("resolved", resolved, self.NOW, self.WINDOW) is Continuation.NEW

"""Matching a sender to a named contact, and the CLI's address check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbot.addresses import is_valid_address, normalize, same_person


class TestNormalize:
    @pytest.mark.parametrize(
        ("address", "key"),
        [
            ("ana@school.org", "ana@school.org"),
            ("ana@School.ORG", "ana@school.org"),
            ("Ana.Lopez@school.org", "ana.lopez@school.org"),
            ("ana+tickets@school.org", "ana@school.org"),
            ("ana+a+b@school.org", "ana@school.org"),
            ("ana+@school.org", "ana@school.org"),
            ("+ana@school.org", "+ana@school.org"),
            ('"ana"@school.org', "ana@school.org"),
            ('"ana@home"@school.org', "ana@home@school.org"),
            ('"a\\"na"@school.org', 'a"na@school.org'),
            ("ana@münchen.de", "ana@xn--mnchen-3ya.de"),
            ("ana@MÜNCHEN.DE", "ana@xn--mnchen-3ya.de"),
            ("ana@ＳＣＨＯＯＬ．org", "ana@school.org"),
            ("ÉLODIE@école.fr", "élodie@xn--cole-9oa.fr"),
            ("ana@[127.0.0.1]", "ana@[127.0.0.1]"),
            ("ana@[ipv6:0:0:0:0:0:0:0:1]", "ana@[IPv6:::1]"),
        ],
    )
    def test_key(self, address: str, key: str) -> None:
        """Case, plus tags, quoting and IDNA are folded; everything else is kept."""
        assert normalize(address) == key

    def test_dots_are_kept(self) -> None:
        """a.na is not ana: only Gmail's own domain ignores dots."""
        assert normalize("a.na@gmail.com") != normalize("ana@gmail.com")

    def test_sharp_s_is_not_casefolded(self) -> None:
        """Lowercasing, not casefolding: straße and strasse stay two people."""
        assert normalize("STRAßE@school.de") == "straße@school.de"
        assert not same_person("straße@school.de", "strasse@school.de")

    def test_nfc(self) -> None:
        """A decomposed é in the local part matches the composed one."""
        assert normalize("e\u0301lodie@school.fr") == normalize("\u00e9lodie@school.fr")

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "ana",
            "@school.org",
            "ana@",
            "ana@school..org",
            "ana@-school.org",
            "ana@[999.0.0.1]",
            "ana@x.org.",
        ],
    )
    def test_not_an_address(self, text: str) -> None:
        """Text that is not local@domain raises ValueError, which callers read as an unknown sender."""
        with pytest.raises(ValueError):
            normalize(text)

    @given(
        local=st.from_regex(r"[A-Za-z0-9._%+-]{1,20}", fullmatch=True),
        domain=st.sampled_from(["school.org", "School.Org", "münchen.de", "[127.0.0.1]"]),
    )
    def test_idempotent(self, local: str, domain: str) -> None:
        """A key is its own key, so keys stored in the database can be normalized again safely."""
        key = normalize(f"{local}@{domain}")
        assert normalize(key) == key


class TestSamePerson:
    def test_plus_tag_is_the_same_person(self) -> None:
        """ana+x@ writes as ana@ (the decision and its reason are in the module docstring)."""
        assert same_person("ana+x@school.org", "ana@school.org")
        assert same_person("ANA+Support@School.org", "ana+other@school.org")

    def test_other_domain_is_another_person(self) -> None:
        """The local part alone never matches."""
        assert not same_person("ana@school.org", "ana@other.org")
        assert not same_person("ana@school.org", "ana@sub.school.org")

    def test_different_local_part(self) -> None:
        """Two people at one school stay two people."""
        assert not same_person("ana@school.org", "bob@school.org")
        assert not same_person("+x@school.org", "x@school.org")

    def test_idna_both_ways(self) -> None:
        """A contact stored in A-labels matches a sender in U-labels."""
        assert same_person("ana@xn--mnchen-3ya.de", "Ana@München.de")

    def test_garbage_is_nobody(self) -> None:
        """An unparseable address is not anybody, not even itself."""
        assert not same_person("not an address", "not an address")
        assert not same_person("ana@school.org", "ana@")


class TestIsValidAddress:
    @pytest.mark.parametrize(
        "text",
        [
            "ana@school.org",
            "Ana.Lopez+help@sub.school.org",
            "o'brien@school.ie",
            "mary-jane@st-marys.school.org",
            "!#$%&'*+/=?^_`{|}~-@school.org",
            "élodie@école.fr",
            "ana@xn--mnchen-3ya.de",
            "ana@[127.0.0.1]",
            "ana@[127.8.9.10]",
            "ana@[IPv6:::1]",
            "a" * 64 + "@school.org",
        ],
    )
    def test_valid(self, text: str) -> None:
        """Plain addr-specs, internationalized ones and loopback literals are accepted."""
        assert is_valid_address(text)

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "ana",
            "ana@",
            "@school.org",
            "ana@@school.org",
            "ana@home@school.org",
            '"ana@home"@school.org',
            '"ana smith"@school.org',
            "ana smith@school.org",
            "ana@school.org ",
            " ana@school.org",
            "ana\t@school.org",
            "ana\r\n@school.org",
            "ana\x00@school.org",
            "ana\u200b@school.org",
            "ana\u00a0@school.org",
            ".ana@school.org",
            "ana.@school.org",
            "a..na@school.org",
            "ana(comment)@school.org",
            "<ana@school.org>",
            "Ana <ana@school.org>",
            "ana@school",
            "ana@localhost",
            "ana@school.org.",
            "ana@.school.org",
            "ana@school..org",
            "ana@-school.org",
            "ana@school_x.org",
            "ana@[10.0.0.1]",
            "ana@[192.0.2.1]",
            "ana@[IPv6:2001:db8::1]",
            "ana@[::1]",
            "ana@[localhost]",
            "a" * 65 + "@school.org",
            "ana@" + ("a" * 63 + ".") * 4 + "org",
        ],
    )
    def test_invalid(self, text: str) -> None:
        """Spaces, controls, display names, bad dots, bad domains and non-loopback literals are refused."""
        assert not is_valid_address(text)

    def test_total_length(self) -> None:
        """A 254-octet address is the longest accepted (RFC 5321 section 4.5.3.1.3)."""
        domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "org"])
        local = "x" * (254 - 1 - len(domain))
        assert len(local) == 58
        assert is_valid_address(f"{local}@{domain}")
        assert not is_valid_address(f"{local}x@{domain}")

"""The pure normalisation that duplicate detection compares by."""

from __future__ import annotations

import pytest

from services.registrations import normalise

# --- phones ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "+44 20 7946 0958",
        "020 7946 0958",
        "02079460958",
        "0044 20 7946 0958",
        "+44 (0)20 7946 0958",
        "(020) 7946-0958",
        "+442079460958",
        "\u00a0020\u00a07946\u00a00958 ",
    ],
)
def test_one_london_number_written_many_ways_is_one_e164(written: str) -> None:
    assert normalise.phone_e164(written, "GB") == "+442079460958"


def test_national_numbers_are_read_in_the_clinics_country() -> None:
    assert normalise.phone_e164("(202) 555-0143", "US") == "+12025550143"
    assert normalise.phone_e164("01 234 5678", "IE") == "+35312345678"
    # An international number is the same whatever the clinic's country.
    assert normalise.phone_e164("+1 202 555 0143", "GB") == "+12025550143"
    assert normalise.phone_e164("+1 202 555 0143", "gb") == "+12025550143"


@pytest.mark.parametrize(
    "junk", ["", "   ", "hello", "12", "020 7946", "+44 20 7946 0958 12345", "9" * 50]
)
def test_what_is_not_a_phone_number_is_refused(junk: str) -> None:
    with pytest.raises(ValueError, match="phone number"):
        normalise.phone_e164(junk, "GB")


# --- e-mail and names ------------------------------------------------------------------------


def test_email_key_ignores_case_and_surrounding_space() -> None:
    assert normalise.email_key("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    assert normalise.email_key("ANN.LEE@EXAMPLE.COM") == normalise.email_key("ann.lee@example.com")
    # Full-width letters are NFKC-folded first.
    assert normalise.email_key("ａｎｎ@example.com") == "ann@example.com"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Smith", "SMITH"),
        ("  Smith ", "smith"),
        ("Mary  Ann", "mary ann"),
        ("Mary\tAnn", "Mary\u00a0Ann"),
        ("Ｓｍｉｔｈ", "smith"),  # full-width
        ("Straße", "STRASSE"),  # case folding, not just lower-casing
        ("ﬁnn", "Finn"),  # a ligature
        ("Zoë", "Zoe\u0308"),  # composed and decomposed
    ],
)
def test_names_compare_equal_across_case_width_and_spacing(one: str, other: str) -> None:
    assert normalise.name_key(one) == normalise.name_key(other)


def test_different_names_stay_different() -> None:
    assert normalise.name_key("O'Brien") != normalise.name_key("OBrien")
    assert normalise.name_key("Lee") != normalise.name_key("Leigh")


def test_collapse_keeps_case_but_tidies_space() -> None:
    assert normalise.collapse("  Mary \t Ann  ") == "Mary Ann"
    assert normalise.collapse("Ｍａｒｙ") == "Mary"


# --- postcodes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "country", "canonical"),
    [
        ("sw1a1aa", "GB", "SW1A 1AA"),
        ("SW1A 1AA", "GB", "SW1A 1AA"),
        ("  sw1a   1aa ", "gb", "SW1A 1AA"),
        ("m11ae", "GB", "M1 1AE"),
        ("b338th", "GB", "B33 8TH"),
        ("cr26xh", "GB", "CR2 6XH"),
        ("dn551pt", "GB", "DN55 1PT"),
        ("gir0aa", "GB", "GIR 0AA"),
        ("a65f4e2", "IE", "A65 F4E2"),
        ("d6wxy12", "IE", "D6W XY12"),
        ("94105", "US", "94105"),
        ("941051234", "US", "94105-1234"),
        ("94105-1234", "US", "94105-1234"),
        ("k1a0b1", "CA", "K1A 0B1"),
        ("1012ab", "NL", "1012 AB"),
        ("75008", "FR", "75008"),
        ("10117", "DE", "10117"),
        ("2000", "AU", "2000"),
        ("11455", "SE", "114 55"),
        ("00950", "PL", "00-950"),
        ("1000205", "PT", "1000-205"),
        ("ab-12 3", "JP", "AB-12 3"),  # a country without rules: tidied, not judged
    ],
)
def test_postcodes_take_their_countrys_written_form(
    written: str, country: str, canonical: str
) -> None:
    assert normalise.postcode(written, country) == canonical


def test_postcode_key_is_the_canonical_form_without_separators() -> None:
    assert normalise.postcode_key("sw1a 1aa", "GB") == "SW1A1AA"
    assert normalise.postcode_key("SW1A1AA", "GB") == normalise.postcode_key(" sw1a  1aa", "GB")
    assert normalise.postcode_key("94105-1234", "US") == "941051234"


@pytest.mark.parametrize(
    ("junk", "country"),
    [
        ("", "GB"),
        ("SW1A", "GB"),
        ("12345", "GB"),
        ("SW1A 1AAA", "GB"),
        ("1234", "US"),
        ("ABCDE", "FR"),
        ("B65 F4E2", "IE"),
        ("D1A 0B1", "CA"),
        ("0123 AB", "NL"),
        ("X" * 20, "JP"),
    ],
)
def test_malformed_postcodes_are_refused(junk: str, country: str) -> None:
    with pytest.raises(ValueError, match="postcode|Eircode|ZIP|postal code"):
        normalise.postcode(junk, country)


# --- microchips ------------------------------------------------------------------------------


def test_microchips_are_fifteen_digits_once_separators_are_dropped() -> None:
    assert normalise.microchip("985 112 345 678 901") == "985112345678901"
    assert normalise.microchip("985-112-345-678-901") == "985112345678901"
    assert normalise.microchip("９８５１１２３４５６７８９０１") == "985112345678901"


@pytest.mark.parametrize("junk", ["", "98511234567890", "9851123456789012", "98511234567890A"])
def test_other_microchip_numbers_are_refused(junk: str) -> None:
    with pytest.raises(ValueError, match="15 digits"):
        normalise.microchip(junk)

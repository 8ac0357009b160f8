"""Pure normalisation of what people type, so that one person written two ways compares equal.

Every function takes raw text and returns the canonical form, or raises ``ValueError`` with a
message fit for a problem's field error. Duplicate detection compares these forms only:

- e-mail: trimmed, NFKC, lower-cased (``Ann@Example.COM`` is ``ann@example.com``);
- phone: E.164, national numbers read in the clinic's country (``020 7946 0958`` in GB is
  ``+442079460958``, as is ``+44 20 7946 0958`` and ``0044 20 7946 0958``);
- names: NFKC, case-folded, inner whitespace collapsed (``ＳＭＩＴＨ`` and ``  smith `` are one);
- postcodes: the country's own format (GB ``sw1a1aa`` is ``SW1A 1AA``);
- microchips: ISO 11784 transponder codes, 15 digits once spaces and dashes are dropped.
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

_SPACES = re.compile(r"\s+")


def collapse(text: str) -> str:
    """NFKC, trimmed, every run of whitespace one space: how a name is stored and shown."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def name_key(text: str) -> str:
    """A name as duplicate detection compares it: NFKC, case-folded, whitespace collapsed."""
    # NFKC again after casefold: folding can produce sequences NFKC would have composed.
    return collapse(unicodedata.normalize("NFKC", collapse(text).casefold()))


def email_key(text: str) -> str:
    """An e-mail address as duplicate detection compares it: the whole address lower-cased.

    The local part is case-sensitive in theory only; no mail provider treats it so, and two
    registrations differing in it are the same person.
    """
    return unicodedata.normalize("NFKC", text).strip().lower()


def phone_e164(text: str, country: str) -> str:
    """A phone number in E.164, a national one read as dialled in ``country`` (ISO 3166 alpha-2).

    Refuses what is not a valid number for its country (wrong length, unallocated prefix).
    """
    raw = text.strip()
    if not raw or len(raw) > 40:
        raise ValueError("not a phone number")
    try:
        number = phonenumbers.parse(raw, country.upper())
    except phonenumbers.NumberParseException:
        raise ValueError("not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(
            "not a valid phone number; give it with its country code (+44 …) "
            "or as dialled in the clinic's country"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --- postcodes -------------------------------------------------------------------------------

_GB = re.compile(r"^(GIR0AA|[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2})$")
_IE = re.compile(r"^[AC-FHKNPRTV-Y][0-9]{2}[0-9AC-FHKNPRTV-Y]{4}$|^D6W[0-9AC-FHKNPRTV-Y]{4}$")
_CA = re.compile(r"^[ABCEGHJ-NPRSTVXY][0-9][A-Z][0-9][A-Z][0-9]$")
_NL = re.compile(r"^[1-9][0-9]{3}[A-Z]{2}$")


def _digits(n: int) -> re.Pattern[str]:
    return re.compile(rf"^[0-9]{{{n}}}$")


#: Countries whose postcode is a plain run of digits, by length.
_NUMERIC = {
    "AT": 4,
    "AU": 4,
    "BE": 4,
    "CH": 4,
    "DK": 4,
    "NO": 4,
    "NZ": 4,
    "DE": 5,
    "ES": 5,
    "FI": 5,
    "FR": 5,
    "IT": 5,
}


def postcode(text: str, country: str) -> str:
    """A postcode in its country's canonical written form; other countries' codes are trimmed,
    upper-cased and their whitespace collapsed."""
    country = country.upper()
    compact = re.sub(r"[\s-]+", "", unicodedata.normalize("NFKC", text)).upper()
    if not compact:
        raise ValueError("not a postcode")
    if country == "GB":
        if not _GB.match(compact):
            raise ValueError("not a UK postcode (e.g. SW1A 1AA)")
        return f"{compact[:-3]} {compact[-3:]}"
    if country == "IE":
        if not _IE.match(compact):
            raise ValueError("not an Eircode (e.g. A65 F4E2)")
        return f"{compact[:3]} {compact[3:]}"
    if country == "US":
        if _digits(5).match(compact):
            return compact
        if _digits(9).match(compact):
            return f"{compact[:5]}-{compact[5:]}"
        raise ValueError("not a ZIP code (e.g. 94105 or 94105-1234)")
    if country == "CA":
        if not _CA.match(compact):
            raise ValueError("not a Canadian postal code (e.g. K1A 0B1)")
        return f"{compact[:3]} {compact[3:]}"
    if country == "NL":
        if not _NL.match(compact):
            raise ValueError("not a Dutch postcode (e.g. 1012 AB)")
        return f"{compact[:4]} {compact[4:]}"
    if country == "SE":
        if not _digits(5).match(compact):
            raise ValueError("not a Swedish postcode (e.g. 114 55)")
        return f"{compact[:3]} {compact[3:]}"
    if country == "PL":
        if not _digits(5).match(compact):
            raise ValueError("not a Polish postcode (e.g. 00-950)")
        return f"{compact[:2]}-{compact[2:]}"
    if country == "PT":
        if not _digits(7).match(compact):
            raise ValueError("not a Portuguese postcode (e.g. 1000-205)")
        return f"{compact[:4]}-{compact[4:]}"
    length = _NUMERIC.get(country)
    if length is not None:
        if not _digits(length).match(compact):
            raise ValueError(f"not a postcode of {country} ({length} digits)")
        return compact
    loose = collapse(text).upper()
    if len(loose) > 12:
        raise ValueError("not a postcode")
    return loose


def postcode_key(text: str, country: str) -> str:
    """A postcode as duplicate detection compares it: canonical, without spaces or dashes."""
    return re.sub(r"[\s-]+", "", postcode(text, country))


# --- animals ---------------------------------------------------------------------------------


def microchip(text: str) -> str:
    """An ISO 11784/11785 microchip number: exactly 15 digits (spaces and dashes dropped)."""
    compact = re.sub(r"[\s-]+", "", unicodedata.normalize("NFKC", text))
    if not re.fullmatch(r"[0-9]{15}", compact):
        raise ValueError("a microchip number is 15 digits")
    return compact


def choice_key(text: str) -> str:
    """How an answer is matched against a form list (species, breed, title, …)."""
    return name_key(text)

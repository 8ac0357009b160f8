"""The registration form: the default lists every group starts with, a group's own changes laid
over them, and the lookups that check a registration's answers against the result.

A group stores only the lists it changed; every other list follows these defaults, so improving
a default reaches every group that kept it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from services.registrations.normalise import choice_key
from services.registrations.schemas import (
    Choice,
    ConsentItem,
    CountryChoice,
    FieldName,
    FormField,
    FormLists,
    RegistrationForm,
    SpeciesChoice,
)

#: Every field of the form, in the order a form shows them.
FIELDS: tuple[str, ...] = get_args(FieldName)
#: Fields no group can make optional: without them there is no one to register.
ALWAYS_REQUIRED: frozenset[str] = frozenset(
    {"client.first_name", "client.last_name", "patient.name", "patient.species"}
)
#: Lists a group may replace (``required_fields`` included).
LISTS: tuple[str, ...] = tuple(FormLists.model_fields)


def _choices(*pairs: tuple[str, str]) -> list[Choice]:
    return [Choice(code=code, name=name) for code, name in pairs]


def _countries(*pairs: tuple[str, str]) -> list[CountryChoice]:
    return [CountryChoice(code=code, name=name) for code, name in pairs]


_COUNTRIES = _countries(
    ("GB", "United Kingdom"),
    ("IE", "Ireland"),
    ("FR", "France"),
    ("DE", "Germany"),
    ("ES", "Spain"),
    ("PT", "Portugal"),
    ("IT", "Italy"),
    ("NL", "Netherlands"),
    ("BE", "Belgium"),
    ("LU", "Luxembourg"),
    ("CH", "Switzerland"),
    ("AT", "Austria"),
    ("DK", "Denmark"),
    ("SE", "Sweden"),
    ("NO", "Norway"),
    ("FI", "Finland"),
    ("PL", "Poland"),
    ("CZ", "Czechia"),
    ("GR", "Greece"),
    ("US", "United States"),
    ("CA", "Canada"),
    ("AU", "Australia"),
    ("NZ", "New Zealand"),
    ("ZA", "South Africa"),
)

_SPECIES = [
    SpeciesChoice(
        code="dog",
        name="Dog",
        breeds=[
            "Crossbreed",
            "Beagle",
            "Bichon Frise",
            "Border Collie",
            "Border Terrier",
            "Boxer",
            "Bulldog",
            "Cavalier King Charles Spaniel",
            "Chihuahua",
            "Cockapoo",
            "Cocker Spaniel",
            "Dachshund",
            "Dobermann",
            "French Bulldog",
            "German Shepherd",
            "Golden Retriever",
            "Greyhound",
            "Jack Russell Terrier",
            "Labradoodle",
            "Labrador Retriever",
            "Lurcher",
            "Miniature Schnauzer",
            "Pomeranian",
            "Poodle",
            "Pug",
            "Rottweiler",
            "Shih Tzu",
            "Springer Spaniel",
            "Staffordshire Bull Terrier",
            "West Highland White Terrier",
            "Whippet",
            "Yorkshire Terrier",
            "Other",
        ],
    ),
    SpeciesChoice(
        code="cat",
        name="Cat",
        breeds=[
            "Domestic Shorthair",
            "Domestic Longhair",
            "Bengal",
            "British Shorthair",
            "Burmese",
            "Maine Coon",
            "Norwegian Forest",
            "Persian",
            "Ragdoll",
            "Siamese",
            "Sphynx",
            "Other",
        ],
    ),
    SpeciesChoice(
        code="rabbit",
        name="Rabbit",
        breeds=[
            "Mixed",
            "Dutch",
            "Holland Lop",
            "Lionhead",
            "Mini Lop",
            "Netherland Dwarf",
            "Rex",
            "Other",
        ],
    ),
    SpeciesChoice(
        code="guinea_pig",
        name="Guinea pig",
        breeds=["Mixed", "Abyssinian", "American", "Peruvian", "Teddy", "Texel", "Other"],
    ),
    SpeciesChoice(code="ferret", name="Ferret"),
    SpeciesChoice(
        code="bird",
        name="Bird",
        breeds=[
            "Budgerigar",
            "Canary",
            "Chicken",
            "Cockatiel",
            "African Grey Parrot",
            "Lovebird",
            "Other",
        ],
    ),
    SpeciesChoice(
        code="reptile",
        name="Reptile",
        breeds=[
            "Bearded Dragon",
            "Corn Snake",
            "Leopard Gecko",
            "Royal Python",
            "Tortoise",
            "Other",
        ],
    ),
    SpeciesChoice(
        code="horse",
        name="Horse",
        breeds=["Arab", "Cob", "Pony", "Shetland", "Thoroughbred", "Warmblood", "Welsh", "Other"],
    ),
    SpeciesChoice(code="other", name="Other"),
]

DEFAULT_LISTS = FormLists(
    titles=["Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Rev"],
    countries=_COUNTRIES,
    species=_SPECIES,
    sexes=_choices(("male", "Male"), ("female", "Female"), ("unknown", "Unknown")),
    referral_sources=_choices(
        ("search_engine", "Search engine"),
        ("social_media", "Social media"),
        ("friend_family", "Friend or family"),
        ("previous_practice", "Moved from another practice"),
        ("passing_by", "Passed the practice"),
        ("advert", "Advertisement"),
        ("breeder_rescue", "Breeder or rescue centre"),
        ("other", "Other"),
    ),
    consents=[
        ConsentItem(
            code="reminders",
            title="Health reminders",
            text="I would like reminders about my pets' vaccinations, treatments and check-ups "
            "by e-mail, text message or post.",
        ),
        ConsentItem(
            code="marketing",
            title="News and offers",
            text="I would like news, offers and information about services from the practice "
            "and its group. I can withdraw this consent at any time.",
        ),
    ],
    required_fields=[
        "client.first_name",
        "client.last_name",
        "client.email",
        "client.phone",
        "patient.name",
        "patient.species",
    ],
)


def effective(overrides: dict[str, Any] | None) -> FormLists:
    """The defaults with a group's stored lists laid over them."""
    values = DEFAULT_LISTS.model_dump()
    for name, value in (overrides or {}).items():
        if name in LISTS and value is not None:
            values[name] = value
    return FormLists.model_validate(values)


def required(lists: FormLists) -> frozenset[str]:
    return ALWAYS_REQUIRED | frozenset(lists.required_fields)


def render(
    lists: FormLists,
    *,
    clinic_id: uuid.UUID,
    group_id: uuid.UUID,
    country: str,
    updated_at: datetime | None,
) -> RegistrationForm:
    """The form as a clinic's partner renders it; the clinic's own country listed first."""
    needed = required(lists)
    countries = sorted(lists.countries, key=lambda c: c.code != country)
    return RegistrationForm(
        clinic_id=clinic_id,
        group_id=group_id,
        default_country=country,
        titles=lists.titles,
        countries=countries,
        species=lists.species,
        sexes=lists.sexes,
        referral_sources=lists.referral_sources,
        consents=lists.consents,
        fields=[FormField(name=name, required=name in needed) for name in FIELDS],
        updated_at=updated_at,
    )


@dataclass(frozen=True)
class Lookups:
    """A form's lists indexed for checking answers: case, width and spacing do not matter."""

    titles: dict[str, str]
    countries: dict[str, str]
    species: dict[str, SpeciesChoice]
    breeds: dict[str, dict[str, str]]
    sexes: dict[str, str]
    referral_sources: dict[str, str]
    consents: dict[str, ConsentItem]
    required: frozenset[str]

    @classmethod
    def of(cls, lists: FormLists) -> Lookups:
        def coded(items: list[Choice]) -> dict[str, str]:
            # An answer may be the code or the label shown; either way the code is kept.
            index = {choice_key(c.name): c.code for c in items}
            index.update({choice_key(c.code): c.code for c in items})
            return index

        species: dict[str, SpeciesChoice] = {}
        for s in lists.species:
            species[choice_key(s.name)] = s
        for s in lists.species:
            species[choice_key(s.code)] = s
        return cls(
            titles={choice_key(t): t for t in lists.titles},
            countries={c.code: c.code for c in lists.countries},
            species=species,
            breeds={s.code: {choice_key(b): b for b in s.breeds} for s in lists.species},
            sexes=coded(lists.sexes),
            referral_sources=coded(lists.referral_sources),
            consents={c.code: c for c in lists.consents},
            required=required(lists),
        )

"""The bookings service's URL map, readable top to bottom."""

from __future__ import annotations

from shared.api import Api


def build_api() -> Api:
    return Api(
        "Vetgate bookings",
        description="Practitioners, services, resource mappings, schedu"
        "les, slots, availability and bookings.",
    )

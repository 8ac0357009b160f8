"""The registrations service's URL map, readable top to bottom."""

from __future__ import annotations

from shared.api import Api


def build_api() -> Api:
    return Api(
        "Vetgate registrations",
        description="Registration form lookups, duplicate checks and client + pet onboarding.",
    )

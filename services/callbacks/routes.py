"""The callbacks service's URL map, readable top to bottom."""

from __future__ import annotations

from shared.api import Api


def build_api() -> Api:
    return Api(
        "Vetgate callbacks",
        description="Webhook endpoints, signed delivery with retries, r"
        "eplay and endpoint monitoring.",
    )

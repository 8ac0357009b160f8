from __future__ import annotations

from shared.settings import ServiceSettings


class BookingsSettings(ServiceSettings):
    service_name: str = "bookings"
    port: int = 8002
    db_schema: str = "bookings"
    # Rendered availability kept per local day (characters of JSON; about a byte each).
    availability_cache_chars: int = 32 * 1024 * 1024

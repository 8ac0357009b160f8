from __future__ import annotations

from shared.settings import ServiceSettings


class BookingsSettings(ServiceSettings):
    service_name: str = "bookings"
    port: int = 8002
    db_schema: str = "bookings"

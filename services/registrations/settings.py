from __future__ import annotations

from shared.settings import ServiceSettings


class RegistrationsSettings(ServiceSettings):
    service_name: str = "registrations"
    port: int = 8003
    db_schema: str = "registrations"

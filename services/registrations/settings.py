from __future__ import annotations

from shared.settings import ServiceSettings


class RegistrationsSettings(ServiceSettings):
    service_name: str = "registrations"
    port: int = 8003
    db_schema: str = "registrations"
    # "Does this client exist?" per application, on top of the tier's limit: low enough that
    # the answers cannot be used to enumerate a group's clients.
    match_rate: float = 10.0
    match_burst: int = 20
    directory_cache_seconds: float = 30.0

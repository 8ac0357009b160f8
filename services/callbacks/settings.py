from __future__ import annotations

from shared.settings import ServiceSettings


class CallbacksSettings(ServiceSettings):
    service_name: str = "callbacks"
    port: int = 8004
    db_schema: str = "callbacks"

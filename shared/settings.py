"""Settings shared by every service: one pydantic-settings base, read from ``VETGATE_*``.

Each service subclasses :class:`ServiceSettings` and only adds what it alone needs. Nothing reads
the environment at import time: settings are built by the entry point and passed in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_PASSPHRASE = "vetgate-local-development-only"
DEV_ADMIN_TOKEN = "vetgate-local-admin-token"
DEV_INTERNAL_TOKEN = "vetgate-local-internal-token"
#: What deployment templates put where a secret must go (deploy/k8s/secrets.example.yaml).
PLACEHOLDER = "REPLACE_ME"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VETGATE_", extra="ignore", populate_by_name=True)

    service_name: str = "vetgate"
    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/vetgate",
        validation_alias=AliasChoices("VETGATE_DATABASE_URL", "DATABASE_URL"),
    )
    db_schema: str = "public"
    db_pool_min: int = 2
    db_pool_max: int = 10
    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        validation_alias=AliasChoices("VETGATE_AMQP_URL", "AMQP_URL"),
    )
    events_exchange: str = "vetgate.events"
    # Queue names get this prefix so that two deployments (or test runs) can share one broker.
    queue_prefix: str = "vetgate"
    admin_token: SecretStr = SecretStr(DEV_ADMIN_TOKEN)
    # Service-to-service calls (e.g. the revocation snapshot); never routed by the gateway.
    internal_token: SecretStr = SecretStr(DEV_INTERNAL_TOKEN)
    issuer: str = "http://127.0.0.1:8000"
    token_audience: str = "vetgate-api"
    auth_url: str = "http://127.0.0.1:8001"
    jwks_cache_seconds: float = 300.0
    jwks_min_refetch_seconds: float = 1.0
    # Tokens issued up to this long after a grant was revoked (or an application suspended) are
    # refused too: it covers the auth service's credential cache and whole-second ``iat``.
    revocation_margin_seconds: float = 2.0
    max_body_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    outbox_poll_seconds: float = 1.0
    # Published outbox rows and handled event ids are kept this long, then purged.
    outbox_retention_hours: float = 72
    processed_retention_hours: float = 168
    housekeeping_interval_seconds: float = 600
    # Requests per second and burst per application tier (0 self-serve, 1 qualified, 2 strategic).
    tier_rates: tuple[float, float, float] = (20.0, 100.0, 500.0)
    tier_bursts: tuple[int, int, int] = (40, 200, 1000)

    def check_production(self) -> None:
        """Refuse to start a production process on the local development secrets."""
        if self.environment != "production":
            return
        if self.admin_token.get_secret_value() == DEV_ADMIN_TOKEN:
            raise RuntimeError("VETGATE_ADMIN_TOKEN must be set in production")
        if self.internal_token.get_secret_value() == DEV_INTERNAL_TOKEN:
            raise RuntimeError("VETGATE_INTERNAL_TOKEN must be set in production")
        # A deployment template's placeholder left in place is as bad as a development secret.
        for name, value in self:
            if isinstance(value, SecretStr) and PLACEHOLDER in value.get_secret_value().upper():
                raise RuntimeError(f"VETGATE_{name.upper()} still holds a placeholder")

from __future__ import annotations

from pydantic import SecretStr, model_validator

from shared.settings import ServiceSettings

DEV_WEBHOOK_SECRETS_KEY = "vetgate-local-webhook-secrets-key"

#: About now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts, then dead-lettered.
DEFAULT_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class CallbacksSettings(ServiceSettings):
    service_name: str = "callbacks"
    port: int = 8004
    db_schema: str = "callbacks"

    # Signing secrets are needed in clear to sign, so they are stored encrypted with this key.
    webhook_secrets_key: SecretStr = SecretStr(DEV_WEBHOOK_SECRETS_KEY)
    # Hosts exempt from the address checks (the sandbox's and the tests' local receivers).
    webhook_allowed_hosts: tuple[str, ...] = ()

    # Delay before each attempt (the first is counted from the event); jittered by ±fraction.
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    retry_jitter: float = 0.1
    # A receiver's Retry-After (429/503) is honoured, clamped into this range.
    retry_after_min_seconds: float = 1.0
    retry_after_max_seconds: float = 3600.0
    connect_timeout_seconds: float = 5.0
    attempt_timeout_seconds: float = 15.0
    response_excerpt_bytes: int = 4096
    # Deliveries in flight per process, and per endpoint across the whole deployment.
    delivery_concurrency: int = 256
    endpoint_concurrency: int = 16
    # A claimed delivery belongs to its worker this long; a worker that died frees it after.
    delivery_lease_seconds: float = 60.0
    dispatch_poll_seconds: float = 0.5
    dispatch_coalesce_seconds: float = 0.003
    claim_batch: int = 200
    # An ordered endpoint waits this long for a missing earlier event of a resource.
    ordering_gap_seconds: float = 10.0
    # No successful delivery for this long disables an endpoint (and tells its contact).
    auto_disable_after_seconds: float = 5 * 24 * 3600.0
    # Secrets replaced by a rotation keep signing this long.
    secret_rotation_grace_seconds: float = 24 * 3600.0
    max_endpoints_per_application: int = 50

    ping_interval_seconds: float = 300.0
    ping_failures_before_alert: int = 3

    # The PULL feed reaches back this far; older events are purged.
    feed_retention_days: float = 30.0
    attempt_retention_days: float = 30.0

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    mail_from: str = "Vetgate <alerts@vetgate.local>"
    smtp_timeout_seconds: float = 10.0

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> CallbacksSettings:
        # A lease shorter than an attempt would let its own worker claim the delivery again
        # while the first attempt is still waiting for an answer.
        if self.delivery_lease_seconds <= self.attempt_timeout_seconds:
            raise ValueError("delivery_lease_seconds must be longer than attempt_timeout_seconds")
        return self

    def check_production(self) -> None:
        super().check_production()
        if (
            self.environment == "production"
            and self.webhook_secrets_key.get_secret_value() == DEV_WEBHOOK_SECRETS_KEY
        ):
            raise RuntimeError("VETGATE_WEBHOOK_SECRETS_KEY must be set in production")

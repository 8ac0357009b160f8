from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from shared.settings import DEV_PASSPHRASE, ServiceSettings


class AuthSettings(ServiceSettings):
    service_name: str = "auth"
    port: int = 8001
    db_schema: str = "auth"
    # RFC 9068 access tokens stay short-lived: 15 minutes at most.
    access_token_ttl: int = Field(default=900, ge=30, le=900)
    signing_key_passphrase: SecretStr = SecretStr(DEV_PASSPHRASE)
    # A new key is published this long before it signs: longer than resource services need to
    # notice it (they also refetch the JWKS on an unknown kid).
    key_publish_delay_seconds: float = 60.0
    # How long an auth process trusts its in-memory copy of the key table.
    key_cache_seconds: float = 5.0
    # How long an auth process reuses an application's credentials and grants between reads;
    # events clear it at once, and resource services' revocation margin covers the rest.
    credential_cache_seconds: float = Field(default=1.0, ge=0, le=5)
    secret_rotation_grace_seconds: int = 24 * 3600
    # Failed client authentications allowed per client id before answers slow down.
    auth_failure_burst: int = 10
    auth_failure_rate: float = 0.5

    @model_validator(mode="after")
    def _margin_covers_cache(self) -> AuthSettings:
        # Resource services refuse tokens issued up to the margin after a revocation; a cached
        # credential can outlive the revocation by the cache time plus whole-second iat.
        if self.revocation_margin_seconds < self.credential_cache_seconds + 1:
            raise ValueError(
                "revocation_margin_seconds must be at least credential_cache_seconds + 1"
            )
        return self

    def check_production(self) -> None:
        super().check_production()
        if self.environment == "production" and (
            self.signing_key_passphrase.get_secret_value() == DEV_PASSPHRASE
        ):
            raise RuntimeError("VETGATE_SIGNING_KEY_PASSPHRASE must be set in production")

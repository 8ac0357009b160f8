"""The four services by name: how to configure, build and migrate each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from shared.settings import ServiceSettings

SERVICES_DIR = Path(__file__).parent


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    settings: Callable[..., ServiceSettings]
    create_app: Callable[[ServiceSettings], web.Application]
    schema: str

    @property
    def directory(self) -> Path:
        return SERVICES_DIR / self.name


def _specs() -> dict[str, ServiceSpec]:
    # Imported here so that importing the registry builds nothing.
    from services.auth.app import create_app as auth_app
    from services.auth.settings import AuthSettings
    from services.bookings.app import create_app as bookings_app
    from services.bookings.settings import BookingsSettings
    from services.callbacks.app import create_app as callbacks_app
    from services.callbacks.settings import CallbacksSettings
    from services.registrations.app import create_app as registrations_app
    from services.registrations.settings import RegistrationsSettings

    def spec(
        name: str, cls: type[ServiceSettings], factory: Callable[..., web.Application]
    ) -> ServiceSpec:
        return ServiceSpec(name, cls, factory, cls.model_fields["db_schema"].default)

    return {
        s.name: s
        for s in (
            spec("auth", AuthSettings, auth_app),
            spec("bookings", BookingsSettings, bookings_app),
            spec("registrations", RegistrationsSettings, registrations_app),
            spec("callbacks", CallbacksSettings, callbacks_app),
        )
    }


SERVICE_NAMES = ("auth", "bookings", "registrations", "callbacks")


def get(name: str) -> ServiceSpec:
    return _specs()[name]


def all_specs() -> list[ServiceSpec]:
    specs = _specs()
    return [specs[n] for n in SERVICE_NAMES]

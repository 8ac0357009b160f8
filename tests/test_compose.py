"""docker-compose.yml against the Compose specification, then against the platform it runs.

No container engine is needed: ``compose_spec`` parses the file strictly (an unknown key, a
misspelt condition or a malformed duration fails), and the rest holds the file to the code:
the CLI verbs, the ports and settings the services read, the start-up order, and the gateway's
routing table in deploy/nginx/nginx.conf.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from compose_spec import PyCompose

from services import registry
from services.cli import build_parser
from services.gateway import ROUTES, route
from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
GATEWAY_PORT = 8000
Service = dict[str, Any]


def _substitute(text: str) -> str:
    """Compose's ``${NAME:-default}`` with nothing set in the shell: the defaults."""
    assert not re.search(r"\$\{\w+\}", text), "every variable needs a default"
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)


# PyYAML resolves the `<<` merge keys the file shares its blocks with, as Compose does.
COMPOSE: dict[str, Any] = yaml.safe_load(_substitute(COMPOSE_TEXT))
SERVICES: dict[str, Service] = COMPOSE["services"]
IMAGE = SERVICES["migrate"]["image"]


def _fields(name: str) -> set[str]:
    settings_class = registry.get(name).settings
    assert isinstance(settings_class, type)
    assert issubclass(settings_class, ServiceSettings)
    return set(settings_class.model_fields)


def _port(name: str) -> int:
    settings_class = registry.get(name).settings
    assert isinstance(settings_class, type)
    port = settings_class.model_fields["port"].default
    assert isinstance(port, int)
    return port


def _command(service: Service) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _depends(service: Service) -> dict[str, str]:
    return {name: rule["condition"] for name, rule in service.get("depends_on", {}).items()}


def _vetgate_containers() -> dict[str, Service]:
    return {name: s for name, s in SERVICES.items() if s.get("image") == IMAGE}


def _spec_json(compose: dict[str, Any]) -> str:
    # "host-gateway" is the engine's name for the host's address where the specification's
    # parser wants an IP literal; any address stands in for it.
    return json.dumps(compose).replace(":host-gateway", ":172.17.0.1")


def test_the_file_is_valid_compose() -> None:
    parsed = PyCompose.from_json(_spec_json(COMPOSE))
    assert set(parsed.service_names()) == set(SERVICES)


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("restart: unless-stopped", "restrat: unless-stopped"),
        ("condition: service_healthy", "condition: service_happy"),
        ("interval: 10s", "interval: ten"),
    ],
)
def test_the_parser_refuses_a_misspelt_file(good: str, bad: str) -> None:
    broken = yaml.safe_load(_substitute(COMPOSE_TEXT.replace(good, bad, 1)))
    with pytest.raises(ValueError, match=r"\S"):
        PyCompose.from_json(_spec_json(broken))


def test_every_vetgate_container_is_the_image_built_here_and_runs_a_real_verb() -> None:
    containers = _vetgate_containers()
    assert set(containers) == {"migrate", "seed", *registry.SERVICE_NAMES}
    parser = build_parser()
    for name, service in containers.items():
        assert service["build"]["context"] == ".", name
        command = _command(service)
        assert command[0] == "vetgate", name
        parser.parse_args(command[1:])  # exits (fails the test) on an unknown verb or option
    assert _command(SERVICES["migrate"]) == ["vetgate", "migrate"]
    assert _command(SERVICES["seed"])[:2] == ["vetgate", "seed-sandbox"]


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_each_service_runs_once_and_is_checked_ready_on_its_own_port(name: str) -> None:
    service = SERVICES[name]
    assert _command(service) == ["vetgate", "run", name]
    check = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{_port(name)}/readyz" in check
    assert service["restart"] == "unless-stopped"
    # Longer than the gateway's 30 s timeout, so requests in flight finish on a stop.
    assert service["stop_grace_period"] == "45s"
    # Replicas (`--scale`) must not fight over a host port.
    assert "ports" not in service


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_services_start_after_the_migrations_and_their_backing_services(name: str) -> None:
    depends = _depends(SERVICES[name])
    assert depends["migrate"] == "service_completed_successfully"
    assert depends["postgres"] == "service_healthy"
    assert depends["rabbitmq"] == "service_healthy"
    for one_shot in ("migrate", "seed"):
        assert SERVICES[one_shot]["restart"] == "no"
    assert _depends(SERVICES["seed"]) == {"migrate": "service_completed_successfully"}
    assert _depends(SERVICES["migrate"]) == {"postgres": "service_healthy"}


def test_the_gateway_waits_for_every_service_and_is_the_only_api_port() -> None:
    gateway = SERVICES["gateway"]
    assert _depends(gateway) == dict.fromkeys(registry.SERVICE_NAMES, "service_healthy")
    assert gateway["ports"] == [f"{GATEWAY_PORT}:{GATEWAY_PORT}"]
    source, target = gateway["volumes"][0].split(":")[:2]
    assert (ROOT / source).resolve() == NGINX_CONF
    assert target == "/etc/nginx/nginx.conf"


def _environment(name: str) -> dict[str, str]:
    env = SERVICES[name]["environment"]
    assert isinstance(env, dict)
    return {key: str(value) for key, value in env.items()}


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_service_settings_from_the_compose_environment(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("VETGATE_") or key in ("DATABASE_URL", "AMQP_URL"):
            monkeypatch.delenv(key)
    env = _environment(name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = registry.get(name).settings()
    assert settings.port == _port(name)
    assert settings.host == "0.0.0.0"
    assert settings.environment == "development"
    assert settings.database_url.startswith("postgresql://vetgate:vetgate@postgres:5432/")
    assert settings.amqp_url.startswith("amqp://guest:guest@rabbitmq:5672")
    assert settings.auth_url == f"http://auth:{_port('auth')}"
    # Tokens name the gateway the partner called, not the container that signed them.
    assert settings.issuer == f"http://localhost:{GATEWAY_PORT}"
    if name == "callbacks":
        assert getattr(settings, "smtp_host") in SERVICES  # noqa: B009 - callbacks only
        assert "host.docker.internal" in getattr(settings, "webhook_allowed_hosts")  # noqa: B009
        assert SERVICES[name]["extra_hosts"] == ["host.docker.internal:host-gateway"]


def test_every_variable_set_is_read_by_some_service() -> None:
    """A misspelt or retired variable would be ignored silently; here it fails."""
    read: set[str] = {"DATABASE_URL", "AMQP_URL"}
    for name in registry.SERVICE_NAMES:
        read |= {f"VETGATE_{field.upper()}" for field in _fields(name)}
    for name in _vetgate_containers():
        unread = set(_environment(name)) - read
        assert not unread, (name, unread)


# --- the nginx gateway routes as services/gateway.py does -------------------------------------


def _locations() -> list[tuple[str, str, str | None]]:
    """(modifier, path, upstream service or None) of each location block of the server."""
    found = []
    for modifier, path, body in re.findall(
        r"location\s+(=|\^~|~)?\s*(\S+)\s*\{(.*?)\}", NGINX_CONF.read_text(), flags=re.DOTALL
    ):
        upstream = re.search(r"proxy_pass http://vetgate_(\w+)", body)
        found.append((modifier, path, upstream.group(1) if upstream else None))
    return found


def test_nginx_upstreams_are_the_compose_services_on_their_ports() -> None:
    servers = dict(
        re.findall(
            r"upstream vetgate_(\w+) \{.*?server (\S+) resolve;",
            NGINX_CONF.read_text(),
            flags=re.DOTALL,
        )
    )
    assert servers == {name: f"{name}:{_port(name)}" for name in registry.SERVICE_NAMES}


def test_every_nginx_location_sends_a_path_where_our_gateway_does() -> None:
    checked = 0
    for modifier, path, service in _locations():
        if service is None or modifier == "~":
            continue  # the regex rows are compared in test_gateway.py
        sample = path + "x" if modifier == "^~" else path
        found = route(sample)
        assert found is not None, sample
        assert found[0] == service, sample
        checked += 1
    assert checked >= len(ROUTES)


def test_nginx_refuses_the_bare_prefixes_our_gateway_does_not_route() -> None:
    refused = [path for modifier, path, service in _locations() if modifier == "=" and not service]
    assert refused
    for path in refused:
        assert route(path) is None, path

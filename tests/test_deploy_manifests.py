"""deploy/k8s: every manifest against the Kubernetes schemas, then what the platform needs of it.

The schemas come with ``kubernetes_validate`` (offline, strict: an unknown or misspelt field
fails). The rest holds the manifests to the code: the ports, entry points and settings the
services read, the gateway's routing table, and the production checks they run at start-up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml  # type: ignore[import-untyped]
from aiohttp.test_utils import make_mocked_request

from services import registry
from services.gateway import ROUTES
from shared.settings import ServiceSettings
from tests.test_gateway import NOT_ROUTED, ROUTED

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
SECRET_TEMPLATE = "secrets.example.yaml"
#: The oldest Kubernetes release the manifests must work on, and the newest the validator knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
NAMESPACE = "vetgate"
AUTOSCALED = {"bookings", "callbacks"}
#: Secrets only one service may hold.
OWN_SECRETS = {
    "VETGATE_SIGNING_KEY_PASSPHRASE": "auth",
    "VETGATE_WEBHOOK_SECRETS_KEY": "callbacks",
}

Doc = dict[str, Any]


def _load() -> list[tuple[str, Doc]]:
    docs = []
    for path in sorted([*K8S.glob("*.yaml"), *K8S.glob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCS = _load()
OBJECTS = [(name, doc) for name, doc in DOCS if doc["kind"] != "Kustomization"]


def _of(kind: str) -> list[Doc]:
    return [doc for _, doc in OBJECTS if doc["kind"] == kind]


def _one(kind: str, name: str) -> Doc:
    found = [doc for doc in _of(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


DEPLOYMENTS = {doc["metadata"]["name"]: doc for doc in _of("Deployment")}
CONFIG: dict[str, str] = _one("ConfigMap", "vetgate-config")["data"]
SECRETS: dict[str, dict[str, str]] = {
    doc["metadata"]["name"]: doc["stringData"]
    for name, doc in OBJECTS
    if doc["kind"] == "Secret" and name == SECRET_TEMPLATE
}


def _pod_specs() -> Iterator[tuple[str, Doc]]:
    for doc in _of("Deployment") + _of("StatefulSet") + _of("Job"):
        yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def _containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _main_container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


#: Kubernetes quantity suffixes: CPU in cores ("500m"), memory in bytes ("256Mi").
_QUANTITY = {
    "m": 1e-3,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
}


def _quantity(value: str | int) -> float:
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match is not None, value
    assert match.group(2) in _QUANTITY, value
    return float(match.group(1)) * _QUANTITY[match.group(2)]


# --- the files ---------------------------------------------------------------------------------


def _object_id(item: tuple[str, Doc]) -> str:
    name, doc = item
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", OBJECTS, ids=[_object_id(item) for item in OBJECTS])
def test_manifest_is_valid_against_the_kubernetes_schema(
    item: tuple[str, Doc], version: str
) -> None:
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{_object_id(item)} against {exc.version}: {path}: {exc.message}")


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    (kustomization,) = [doc for _, doc in DOCS if doc["kind"] == "Kustomization"]
    files = {name for name, _ in OBJECTS} - {SECRET_TEMPLATE}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert kustomization["namespace"] == NAMESPACE
    (image,) = kustomization["images"]
    assert image["name"] == "vetgate"
    assert {_image(c) for c in _vetgate_containers()} == {f"vetgate:{image['newTag']}"}


def test_every_object_lives_in_the_vetgate_namespace() -> None:
    for name, doc in OBJECTS:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
            assert doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, _object_id((name, doc))


def test_every_secret_value_in_the_template_is_a_placeholder() -> None:
    assert set(SECRETS) == {"vetgate-secrets", "rabbitmq-default-user", "rabbitmq-erlang-cookie"}
    for secret in SECRETS.values():
        for key, value in secret.items():
            assert "REPLACE_ME" in value, key
    assert not [doc for name, doc in OBJECTS if doc["kind"] == "Secret" and name != SECRET_TEMPLATE]


# --- the four services ------------------------------------------------------------------------


def _image(container: Doc) -> str:
    return str(container["image"])


def _vetgate_containers() -> list[Doc]:
    return [
        c for _, pod in _pod_specs() for c in _containers(pod) if c["image"].startswith("vetgate:")
    ]


def _port(name: str) -> int:
    """The port the service listens on unless told otherwise (its settings' default)."""
    settings = registry.get(name).settings
    assert isinstance(settings, type)
    assert issubclass(settings, ServiceSettings)
    return int(settings.model_fields["port"].default)


def test_there_is_one_deployment_per_service() -> None:
    assert sorted(DEPLOYMENTS) == sorted(registry.SERVICE_NAMES)


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_deployment_runs_its_service_on_its_port(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    container = _main_container(deployment)
    assert [*container["command"], *container["args"]] == ["vetgate", "run", name]
    assert [p["containerPort"] for p in container["ports"]] == [_port(name)]
    service = _one("Service", name)
    assert service["spec"]["type"] == "ClusterIP"
    assert _matches(
        service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
    )
    assert not [
        other
        for other, d in DEPLOYMENTS.items()
        if other != name
        and _matches(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    (port,) = service["spec"]["ports"]
    assert port["port"] == _port(name)
    assert port["targetPort"] in (_port(name), container["ports"][0]["name"])
    assert _matches(
        deployment["spec"]["selector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"],
    )


def _probe_port(container: Doc, probe: Doc) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_deployment_probes_readyz_and_healthz_on_its_port(name: str) -> None:
    container = _main_container(DEPLOYMENTS[name])
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for kind, path in expected.items():
        probe = container[kind]
        assert probe["httpGet"]["path"] == path, kind
        assert _probe_port(container, probe) == _port(name), kind


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_deployment_shuts_down_gracefully_and_spreads_its_copies(name: str) -> None:
    pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
    # Longer than the gateway's 30 s timeout, plus the preStop pause.
    assert pod["terminationGracePeriodSeconds"] >= 35
    assert _main_container(DEPLOYMENTS[name])["lifecycle"]["preStop"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} >= {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    strategy = DEPLOYMENTS[name]["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("where", [where for where, _ in _pod_specs()])
def test_every_container_sets_resource_requests_and_limits(where: str) -> None:
    pod = dict(_pod_specs())[where]
    for container in _containers(pod):
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = _quantity(resources["requests"][resource])
            limit = _quantity(resources["limits"][resource])
            assert 0 < request <= limit, f"{container['name']} {resource}"


@pytest.mark.parametrize("where", [where for where, _ in _pod_specs()])
def test_every_pod_meets_the_restricted_pod_security_profile(where: str) -> None:
    pod = dict(_pod_specs())[where]
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] > 0
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in _containers(pod):
        own = container["securityContext"]
        assert own["allowPrivilegeEscalation"] is False, container["name"]
        assert own["capabilities"]["drop"] == ["ALL"], container["name"]
        assert own.get("runAsUser", context["runAsUser"]) > 0
        if container["image"].startswith("vetgate:"):
            assert own["readOnlyRootFilesystem"] is True, container["name"]


@pytest.mark.parametrize("where", [where for where, _ in _pod_specs()])
def test_no_pod_gets_service_link_variables(where: str) -> None:
    # A Service named `vetgate` would otherwise hand every pod VETGATE_PORT=tcp://..., which the
    # settings read as the port; one named `rabbitmq` would do the same to the broker's RABBITMQ_*.
    assert dict(_pod_specs())[where]["enableServiceLinks"] is False


# --- scaling and disruption ---------------------------------------------------------------------


def test_bookings_and_callbacks_and_nothing_else_autoscale() -> None:
    hpas = _of("HorizontalPodAutoscaler")
    assert sorted(h["spec"]["scaleTargetRef"]["name"] for h in hpas) == sorted(AUTOSCALED)
    for hpa in hpas:
        spec = hpa["spec"]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        assert spec["minReplicas"] >= 2
        assert spec["maxReplicas"] > spec["minReplicas"]
        (metric,) = spec["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
        # The autoscaler reads utilisation against the request, so there must be one.
        container = _main_container(DEPLOYMENTS[spec["scaleTargetRef"]["name"]])
        assert container["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_replica_count_is_left_to_the_autoscaler_or_fixed_at_two(name: str) -> None:
    # A replica count in an autoscaled Deployment would reset the autoscaler on every apply.
    replicas = DEPLOYMENTS[name]["spec"].get("replicas")
    if name in AUTOSCALED:
        assert replicas is None
    else:
        assert replicas >= 2


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_a_disruption_budget_covers_each_deployment_and_only_it(name: str) -> None:
    labels = DEPLOYMENTS[name]["spec"]["template"]["metadata"]["labels"]
    budgets = [
        pdb
        for pdb in _of("PodDisruptionBudget")
        if _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    ]
    assert len(budgets) == 1
    (budget,) = budgets
    assert budget["spec"]["minAvailable"] == 1
    others = [
        other
        for other, d in DEPLOYMENTS.items()
        if other != name
        and _matches(
            budget["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]
        )
    ]
    assert not others


# --- migrations ---------------------------------------------------------------------------------


def test_migrations_run_as_a_job_of_the_same_image() -> None:
    (job,) = _of("Job")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert [*container["command"], *container["args"]] == ["vetgate", "migrate"]
    assert pod["restartPolicy"] == "Never"
    assert 0 < spec["backoffLimit"] <= 5
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert _image(container) == _image(_main_container(DEPLOYMENTS["auth"]))
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"]


#: The apply steps of deploy/README.md (kubectl -l vetgate.dev/step=...) and the Argo CD sync
#: wave of each: configuration and broker, then the migrations, then the services.
STEP_WAVES = {"prepare": -2, "migrate": -1, "serve": 0}


@pytest.mark.parametrize(
    "item",
    [item for item in OBJECTS if item[0] != SECRET_TEMPLATE],
    ids=[_object_id(item) for item in OBJECTS if item[0] != SECRET_TEMPLATE],
)
def test_each_object_belongs_to_one_apply_step_and_its_sync_wave(item: tuple[str, Doc]) -> None:
    _, doc = item
    step = doc["metadata"]["labels"]["vetgate.dev/step"]
    annotations = doc["metadata"].get("annotations", {})
    assert int(annotations.get("argocd.argoproj.io/sync-wave", "0")) == STEP_WAVES[step]
    serving = doc["kind"] in ("Deployment", "HorizontalPodAutoscaler", "Ingress")
    own = doc["metadata"]["labels"].get("app.kubernetes.io/name") in DEPLOYMENTS
    if doc["kind"] == "Job":
        assert step == "migrate"
    elif serving or own:
        assert step == "serve"
    else:
        assert step == "prepare"


# --- settings: environment and secrets ----------------------------------------------------------


def _environment(container: Doc) -> dict[str, str]:
    """The variables the container gets, with every placeholder made a distinct value."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}
        assert source["configMapRef"]["name"] == "vetgate-config"
        env.update(CONFIG)
    for var in container.get("env", []):
        ref = var["valueFrom"]["secretKeyRef"] if "valueFrom" in var else None
        if ref is None:
            env[var["name"]] = var["value"]
            continue
        assert ref["name"] in SECRETS, var["name"]
        assert ref["key"] in SECRETS[ref["name"]], var["name"]
        env[var["name"]] = SECRETS[ref["name"]][ref["key"]].replace("REPLACE_ME", f"x{var['name']}")
    return env


def test_configuration_is_for_production() -> None:
    assert CONFIG["VETGATE_ENVIRONMENT"] == "production"
    assert CONFIG["VETGATE_HOST"] == "0.0.0.0"
    # Secrets never sit in the ConfigMap.
    assert not set(CONFIG) & set(SECRETS["vetgate-secrets"])


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_service_settings_from_the_manifests_pass_the_production_checks(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = DEPLOYMENTS[name]
    env = _environment(_main_container(deployment))
    for key in list(os.environ):
        if key.startswith("VETGATE_") or key in ("DATABASE_URL", "AMQP_URL"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = registry.get(name).settings()
    assert settings.environment == "production"
    settings.check_production()
    assert settings.port == _port(name)
    assert settings.host == "0.0.0.0"
    assert settings.database_url == env["DATABASE_URL"]
    assert settings.amqp_url == env["AMQP_URL"]
    assert settings.auth_url == f"http://auth:{_port('auth')}"
    assert settings.issuer == f"https://{_public_host()}"


@pytest.mark.parametrize("name", registry.SERVICE_NAMES)
def test_service_secrets_are_only_its_own(name: str) -> None:
    env = {v["name"] for v in _main_container(DEPLOYMENTS[name]).get("env", [])}
    for secret, owner in OWN_SECRETS.items():
        assert (secret in env) == (name == owner), secret


def test_the_migration_job_gets_the_database_and_nothing_secret_besides() -> None:
    (job,) = _of("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = _environment(container)
    assert set(env) - set(CONFIG) == {"DATABASE_URL"}


@pytest.mark.parametrize("where", [where for where, _ in _pod_specs()])
def test_every_volume_and_env_reference_names_an_object_in_the_manifests(where: str) -> None:
    pod = dict(_pod_specs())[where]
    config_maps = {doc["metadata"]["name"]: doc["data"] for doc in _of("ConfigMap")}
    for volume in pod.get("volumes", []):
        sources = volume.get("projected", {}).get("sources", [volume])
        for source in sources:
            if "configMap" in source:
                assert source["configMap"]["name"] in config_maps, volume["name"]
            if "secret" in source:
                name = source["secret"].get("name") or source["secret"].get("secretName")
                assert name in SECRETS, volume["name"]
                for item in source["secret"].get("items", []):
                    assert item["key"] in SECRETS[name]
    for container in _containers(pod):
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert ref["key"] in SECRETS[ref["name"]], var["name"]
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps


# --- the external PostgreSQL ------------------------------------------------------------------


def test_postgres_is_external_and_verified_with_the_mounted_ca() -> None:
    images = [c["image"] for _, pod in _pod_specs() for c in _containers(pod)]
    assert not [image for image in images if image.startswith("postgres")]
    url = urlsplit(SECRETS["vetgate-secrets"]["DATABASE_URL"])
    assert url.scheme == "postgresql"
    query = parse_qs(url.query)
    assert query["sslmode"] == ["verify-full"]
    (root_cert,) = query["sslrootcert"]
    folder, file = root_cert.rsplit("/", 1)
    assert file in _one("ConfigMap", "postgres-ca")["data"]
    for where, pod in _pod_specs():
        for container in pod["containers"]:
            if "DATABASE_URL" not in {v["name"] for v in container.get("env", [])}:
                continue
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            assert volume["configMap"]["name"] == "postgres-ca", where


# --- RabbitMQ -----------------------------------------------------------------------------------


def test_rabbitmq_is_a_three_node_cluster_with_quorum_queues_by_default() -> None:
    statefulset = _one("StatefulSet", "rabbitmq")
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    headless = _one("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    labels = spec["template"]["metadata"]["labels"]
    assert _matches(headless["spec"]["selector"], labels)
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (rule,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    (budget,) = [
        pdb
        for pdb in _of("PodDisruptionBudget")
        if _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    ]
    assert budget["spec"]["maxUnavailable"] == 1
    config = _one("ConfigMap", "rabbitmq-config")["data"]
    settings = dict(
        line.split(" = ", 1)
        for conf in (v for k, v in config.items() if k.endswith(".conf"))
        for line in conf.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert settings["default_queue_type"] == "quorum"
    assert settings["cluster_formation.peer_discovery_backend"] in (
        "k8s",
        "rabbit_peer_discovery_k8s",
    )
    assert settings["cluster_partition_handling"] == "pause_minority"
    assert "rabbitmq_peer_discovery_k8s" in config["enabled_plugins"]
    (node,) = spec["template"]["spec"]["containers"]
    env = {v["name"]: v.get("value") for v in node["env"]}
    assert env["RABBITMQ_NODENAME"].startswith(f"rabbit@$(POD_NAME).{spec['serviceName']}.")


def test_services_reach_the_broker_through_its_cluster_service() -> None:
    url = urlsplit(SECRETS["vetgate-secrets"]["AMQP_URL"])
    assert url.scheme == "amqp"
    service = _one("Service", url.hostname or "")
    assert _matches(
        service["spec"]["selector"],
        _one("StatefulSet", "rabbitmq")["spec"]["template"]["metadata"]["labels"],
    )
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    default_user = SECRETS["rabbitmq-default-user"]["default-user.conf"]
    assert f"default_user = {url.username}" in default_user


# --- the Ingress: the gateway's routing table -------------------------------------------------


def _public_host() -> str:
    hosts = {rule["host"] for doc in _of("Ingress") for rule in doc["spec"]["rules"]}
    assert len(hosts) == 1
    host: str = hosts.pop()
    return host


def _ingress_paths() -> list[tuple[str, str, str | None]]:
    """(path, service, rewrite) for every path of every Ingress."""
    paths = []
    for doc in _of("Ingress"):
        rewrite = doc["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/rewrite-target")
        for rule in doc["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                paths.append((path["path"], path["backend"]["service"]["name"], rewrite))
    return paths


def _ingress_route(path: str) -> list[tuple[str, str | None]]:
    """What ingress-nginx does with ``path``: it merges repeated slashes, then tries each regex
    location, case-insensitively, anchored at the start (``~* "^<path>"``)."""
    merged = re.sub(r"/{2,}", "/", path)
    return [
        (service, rewrite)
        for pattern, service, rewrite in _ingress_paths()
        if re.match("^" + pattern, merged, flags=re.IGNORECASE)
    ]


def test_ingresses_are_regex_nginx_ingresses_on_the_issuers_host_with_tls() -> None:
    issuer = urlsplit(CONFIG["VETGATE_ISSUER"])
    assert issuer.scheme == "https"
    assert issuer.hostname == _public_host()
    for doc in _of("Ingress"):
        spec = doc["spec"]
        assert spec["ingressClassName"] == "nginx"
        assert doc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"
        assert [host for tls in spec["tls"] for host in tls["hosts"]] == [_public_host()]
        for rule in spec["rules"]:
            for path in rule["http"]["paths"]:
                assert path["pathType"] == "ImplementationSpecific"
                assert not path["path"].startswith("^"), "ingress-nginx adds the ^ itself"
                assert path["backend"]["service"]["name"] in DEPLOYMENTS
                assert path["backend"]["service"]["port"] == {"name": "http"}


def test_ingress_paths_are_the_gateway_routes() -> None:
    ours = {pattern.pattern: service for pattern, service in ROUTES}
    ingress = {
        "^" + path: service for path, service, rewrite in _ingress_paths() if rewrite is None
    }
    assert ingress == ours


@pytest.mark.parametrize(("path", "service"), ROUTED)
def test_ingress_routes_each_public_path_to_its_service(path: str, service: str) -> None:
    assert _ingress_route(path) == [(service, None)]


@pytest.mark.parametrize("service", registry.SERVICE_NAMES)
def test_ingress_serves_each_openapi_document_from_its_service(service: str) -> None:
    assert _ingress_route(f"/openapi/{service}.json") == [(service, "/openapi.json")]


#: Paths the gateway refuses but ingress-nginx routes, because it matches case-insensitively
#: and after merging slashes. The service gets the path as sent and answers 404 itself.
INGRESS_ONLY = {
    "/V1/clinics": "auth",
    "/v1/clinics//": "auth",
    "/v1/clinics//bookings": "auth",
    "//oauth/token": "auth",
}
NEVER_ROUTED = [
    *NOT_ROUTED,
    "/internal/v1/revocations",
    "/internal/v1/access",
    "/internal/v1/clinics/x",
    "/INTERNAL/v1/revocations",
    "//internal/v1/revocations",
    "/v1/internal/revocations",
    "/v1/clinics/x/internal",
    "/Healthz",
    "/readyz/",
    "//readyz",
    "/metrics/",
    "/openapi.json",
    "/docs",
]


@pytest.mark.parametrize("path", NEVER_ROUTED)
def test_ingress_does_not_route_what_the_gateway_refuses(path: str) -> None:
    expected = [(INGRESS_ONLY[path], None)] if path in INGRESS_ONLY else []
    assert _ingress_route(path) == expected


@pytest.mark.parametrize(("path", "service"), sorted(INGRESS_ONLY.items()))
async def test_what_only_the_ingress_routes_is_a_404_of_the_service_it_reaches(
    path: str, service: str
) -> None:
    assert path in NOT_ROUTED
    spec = registry.get(service)
    app = spec.create_app(spec.settings())
    match = await app.router.resolve(make_mocked_request("GET", path, app=app))
    assert match.http_exception is not None
    assert match.http_exception.status == 404


def test_no_ingress_path_names_an_internal_or_operational_route() -> None:
    for path, _, _ in _ingress_paths():
        assert not re.search(r"internal|healthz|readyz|metrics", path, flags=re.IGNORECASE), path


def test_the_secrets_template_left_unfilled_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = DEPLOYMENTS["auth"]
    env = _environment(_main_container(deployment))
    for key in list(os.environ):
        if key.startswith("VETGATE_") or key in ("DATABASE_URL", "AMQP_URL"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VETGATE_INTERNAL_TOKEN", "REPLACE_ME")
    with pytest.raises(RuntimeError, match="placeholder"):
        registry.get("auth").settings().check_production()

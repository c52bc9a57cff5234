"""deploy/kubernetes agrees with the Kubernetes API, with KEDA, and with the code it runs.

No cluster runs here, so each overlay is rendered the way `kubectl kustomize` renders it
(tests/deploy/kustomize.py; compared with kubectl itself where it is installed), and the result
is held against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields
fail) for the oldest and the newest version it bundles, against KEDA's ScaledObject and
TriggerAuthentication (deploy/kubernetes/schemas, and the models generated from KEDA's CRD in
cloudcoil-models-keda), and against what the manifests name: the settings classes, the
`articleforge` CLI, the FastAPI routes, the ports, the RQ queues and docker-compose.yml.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from kubernetes_validate.utils import latest_version
from redis import Redis
from rq import Queue

from services.cli import app as cli_app
from services.gateway.job_base import ARTICLES_QUEUE, IMAGES_QUEUE
from tests.deploy.compose import (
    NON_PROJECT_VARS,
    PREFIX,
    REPO,
    SETTINGS,
    all_setting_names,
    app_for,
    default_port,
    health_path,
    healthcheck_argv,
    parse_cli,
    project,
    seconds,
    serves,
    setting_names,
)
from tests.deploy.kustomize import Resource, build, containers_of, pod_spec, split_image

KUBE = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if p.is_dir())
NAMESPACE = "articleforge"
# The oldest Kubernetes the manifests are meant for, and the newest schema the validator has.
KUBERNETES_VERSIONS = ["1.30", latest_version()]
KEDA_SCHEMAS = {
    kind: json.loads((KUBE / "schemas" / f"{kind.lower()}-keda-v1alpha1.json").read_text())
    for kind in ("ScaledObject", "TriggerAuthentication")
}
HTTP_SERVICES = ("text", "image", "gateway", "ui")
MODEL_SERVICES = ("text", "image")

per_overlay = pytest.mark.parametrize("overlay", OVERLAYS)


@cache
def _rendered(overlay: str) -> tuple[Resource, ...]:
    return tuple(build(KUBE / "overlays" / overlay))


def rendered(overlay: str) -> list[Resource]:
    return copy.deepcopy(list(_rendered(overlay)))


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind}s named {name}"
    return found[0]


def workload(resources: list[Resource], name: str) -> Resource:
    found = [r for r in resources if pod_spec(r) is not None and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} workloads named {name}"
    return found[0]


def container(resources: list[Resource], name: str) -> dict[str, Any]:
    (one,) = [c for c in containers_of(workload(resources, name)) if c["name"] == name]
    return one


def secret_data(secret: Resource) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return data | (secret.get("stringData") or {})


def env_sources(resources: list[Resource], spec: dict[str, Any]) -> dict[str, str]:
    """The variables a container starts with: envFrom in order (a later source wins), then
    `env`, which wins over all of them, as the kubelet does it."""
    out: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            out |= find(resources, "ConfigMap", source["configMapRef"]["name"])["data"]
        else:
            out |= secret_data(find(resources, "Secret", source["secretRef"]["name"]))
    for var in spec.get("env", []):
        if "value" in var:
            out[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            data = secret_data(find(resources, "Secret", key["name"]))
        else:
            key = ref["configMapKeyRef"]
            data = find(resources, "ConfigMap", key["name"])["data"]
        if key["key"] in data:
            out[var["name"]] = data[key["key"]]
        else:
            assert key.get("optional"), f"{var['name']}: no key {key['key']} in {key['name']}"
    return out


def service_url(resources: list[Resource], name: str) -> str:
    """The URL of a Service of one port, as pods in the namespace reach it."""
    service = find(resources, "Service", name)
    (port,) = service["spec"]["ports"]
    return f"http://{name}:{port['port']}"


def probes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        kind: spec[kind]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if kind in spec
    }


def probe_budget(probe: dict[str, Any]) -> int:
    """Seconds a probe allows before it counts as failed (Kubernetes' defaults filled in)."""
    period, failures = probe.get("periodSeconds", 10), probe.get("failureThreshold", 3)
    return int(probe.get("initialDelaySeconds", 0) + period * failures)


# -- rendering and schemas ----------------------------------------------------------------------


@per_overlay
def test_the_renderer_agrees_with_kubectl_kustomize(overlay: str) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl on this machine (it is not on the package registries)")
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    key = lambda r: (r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"])  # noqa: E731
    theirs = sorted((doc for doc in yaml.safe_load_all(out) if doc), key=key)
    assert sorted(rendered(overlay), key=key) == theirs


@per_overlay
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(
    overlay: str, version: str
) -> None:
    checked = 0
    for resource in rendered(overlay):
        if resource["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: the test below
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{overlay}: {name} against Kubernetes {version}: {path}: {exc.message}")
        checked += 1
    assert checked >= 10


def keda_problems(resource: Resource) -> list[str]:
    schema = KEDA_SCHEMAS[resource["kind"]]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(resource)
    ]


@per_overlay
def test_keda_resources_validate_against_keda(overlay: str) -> None:
    from cloudcoil.models.keda import v1alpha1 as keda

    resources = [r for r in rendered(overlay) if r["apiVersion"].startswith("keda.sh/")]
    assert "ScaledObject" in {r["kind"] for r in resources}
    for resource in resources:
        assert keda_problems(resource) == [], resource["metadata"]["name"]
        # cloudcoil's models are generated from KEDA's CRD and drop what they do not know: a
        # field lost on the way through is not one of KEDA's.
        model = getattr(keda, resource["kind"]).model_validate(resource)
        assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == resource
        behavior = resource["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
        if "behavior" in behavior:  # Kubernetes' own HorizontalPodAutoscalerBehavior
            hpa = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "keda-hpa-worker"},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
                    "maxReplicas": 1,
                    "behavior": behavior["behavior"],
                },
            }
            kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[0], strict=True)


def test_the_keda_schema_refuses_what_keda_would_not_read() -> None:
    scaled = find(rendered("gpu"), "ScaledObject", "worker")
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    for broken in (
        {"listname": trigger["listName"]},  # misspelt key
        {"listLength": 16},  # KEDA's metadata are strings
        {"address": "redis://redis:6379/0"},  # a URL, not host:port
    ):
        copy_ = copy.deepcopy(scaled)
        copy_["spec"]["triggers"][0]["metadata"] = {
            k: v for k, v in trigger.items() if k.lower() not in {b.lower() for b in broken}
        } | broken
        assert keda_problems(copy_), broken


@per_overlay
def test_everything_lands_in_one_namespace(overlay: str) -> None:
    for resource in rendered(overlay):
        if resource["kind"] == "Namespace":
            assert resource["metadata"]["name"] == NAMESPACE
        else:
            assert resource["metadata"].get("namespace") == NAMESPACE, resource["metadata"]["name"]


@per_overlay
def test_every_reference_names_a_resource_of_the_overlay(overlay: str) -> None:
    resources = rendered(overlay)
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    for resource in resources:
        spec = pod_spec(resource)
        if spec is None:
            continue
        for c in containers_of(resource):
            env_sources(resources, c)  # raises on a missing ConfigMap, Secret or key
        for volume in spec.get("volumes", []):
            assert set(volume) & {"emptyDir", "persistentVolumeClaim", "configMap", "secret"}
        for mount in (m for c in containers_of(resource) for m in c.get("volumeMounts", [])):
            declared = {v["name"] for v in spec.get("volumes", [])}
            claims = {
                t["metadata"]["name"] for t in resource["spec"].get("volumeClaimTemplates", [])
            }
            assert mount["name"] in declared | claims, f"{resource['metadata']['name']}: {mount}"
        if resource["kind"] == "StatefulSet":
            assert ("Service", resource["spec"]["serviceName"]) in names
        labels = resource["spec"]["template"]["metadata"]["labels"]
        assert resource["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (r for r in resources if r["kind"] == "Service"):
        selected = [
            w
            for w in resources
            if pod_spec(w) is not None
            and service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)}"
        ports = {p.get("name") for c in containers_of(selected[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, service["metadata"]["name"]


# -- the code the manifests run -----------------------------------------------------------------


@per_overlay
def test_every_articleforge_variable_is_a_setting_of_the_process_that_reads_it(
    overlay: str,
) -> None:
    resources = rendered(overlay)
    # What every pod reads through envFrom, as compose's env_file: each process reads its own.
    for kind in ("ConfigMap", "Secret"):
        for resource in (r for r in resources if r["kind"] == kind):
            keys = set(resource.get("data") or {}) | set(resource.get("stringData") or {})
            if resource["metadata"]["name"] == "articleforge-redis-auth":
                continue  # KEDA's, read by no articleforge process
            for key in keys:
                assert key in all_setting_names() | NON_PROJECT_VARS, f"{kind}: {key}"
    # What a container sets for itself must be a setting of its own process.
    for name, cls in SETTINGS.items():
        own = setting_names(cls)
        for var in container(resources, name).get("env", []):
            assert var["name"] in own | NON_PROJECT_VARS, f"{name}: {var['name']}"
    if any(r["metadata"]["name"] == "redis" for r in resources):
        assert not [v for v in container(resources, "redis").get("env", []) if PREFIX in v["name"]]


@per_overlay
@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_process_accepts_the_settings_it_is_given(
    overlay: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings class of each container loads from exactly what the pod would get: a bad
    value (an unknown quantization, a malformed bucket URL) fails here, not at start-up."""
    env = env_sources(rendered(overlay), container(rendered(overlay), service))
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = SETTINGS[service](_env_file=None)
    if service in ("gateway", "worker"):
        assert settings.storage_url.startswith("s3://"), "no shared volume: storage is a bucket"
        assert (settings.storage_access_key_id is None) == (
            settings.storage_secret_access_key is None
        )


@pytest.mark.parametrize("service", ["text", "image", "gateway", "worker", "ui"])
def test_each_container_runs_the_compose_command_and_image(service: str) -> None:
    compose_service = project()["services"][service]
    spec = container(rendered("gpu"), service)
    assert spec["command"] == compose_service["command"]
    parse_cli(spec["command"])
    base = container(build(KUBE / "base"), service)
    # The base names the images that `docker compose build` makes (IMAGE_PREFIX=articleforge).
    assert split_image(base["image"])[0] == split_image(compose_service["image"])[0]
    assert not base.get("args"), "the command is the whole argv"
    # The overlays name what `docker compose build` tags with a registry prefix and a release.
    release = {"IMAGE_PREFIX": "registry.example.com/articleforge", "IMAGE_TAG": "0.1.0"}
    assert spec["image"] == project(variables=release)["services"][service]["image"]


@per_overlay
@pytest.mark.parametrize("service", HTTP_SERVICES)
def test_ports_match_the_settings_and_the_services(overlay: str, service: str) -> None:
    resources = rendered(overlay)
    spec = container(resources, service)
    port = default_port(service)
    (declared,) = spec["ports"]
    assert declared == {"name": "http", "containerPort": port}
    env = {v["name"]: v.get("value") for v in spec.get("env", [])}
    if service != "ui":  # `articleforge ui` takes no port setting
        assert env[f"{PREFIX}{service.upper()}_PORT"] == str(port)
    assert service_url(resources, service) == f"http://{service}:{port}"


@per_overlay
def test_the_url_settings_point_at_the_services(overlay: str) -> None:
    resources = rendered(overlay)
    gateway = env_sources(resources, container(resources, "gateway"))
    ui = env_sources(resources, container(resources, "ui"))
    # One URL per model service, the Service's: Kubernetes spreads the connections.
    assert gateway[f"{PREFIX}TEXT_URL"] == service_url(resources, "text")
    assert gateway[f"{PREFIX}IMAGE_URL"] == service_url(resources, "image")
    assert ui[f"{PREFIX}UI_GATEWAY_URL"] == service_url(resources, "gateway")
    assert ui[f"{PREFIX}UI_TEXT_URL"] == service_url(resources, "text")
    assert ui[f"{PREFIX}UI_IMAGE_URL"] == service_url(resources, "image")
    worker = env_sources(resources, container(resources, "worker"))
    shared = set(gateway) - {f"{PREFIX}GATEWAY_PORT"}
    assert {k: worker[k] for k in shared} == {k: gateway[k] for k in shared}, "one settings class"
    redis = urlsplit(gateway[f"{PREFIX}REDIS_URL"])
    if any(r["kind"] == "StatefulSet" and r["metadata"]["name"] == "redis" for r in resources):
        (port,) = find(resources, "Service", "redis")["spec"]["ports"]
        assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", port["port"])
        assert container(resources, "redis")["ports"][0]["containerPort"] == port["port"]


@per_overlay
@pytest.mark.parametrize("service", HTTP_SERVICES)
def test_probes_ask_real_routes(overlay: str, service: str) -> None:
    spec = container(rendered(overlay), service)
    found = probes(spec)
    assert {"readinessProbe", "livenessProbe"} <= set(found)
    paths = {kind: probe["httpGet"]["path"] for kind, probe in found.items()}
    for probe in found.values():
        assert probe["httpGet"]["port"] == "http"
    if service == "ui":
        assert set(paths.values()) == {health_path("ui")}
        return
    # Ready: the model is loaded and warmed up. Alive: the process answers (it does from the
    # first second, while the model loads in the background).
    assert paths["readinessProbe"] == "/readyz"
    assert paths["livenessProbe"] == "/healthz"
    assert paths.get("startupProbe", "/readyz") == "/readyz"
    app = app_for(service)
    for path in paths.values():
        assert serves(app, path), f"{service} has no route {path}"


@pytest.mark.parametrize("service", MODEL_SERVICES)
def test_model_services_may_take_as_long_to_start_as_compose_allows(service: str) -> None:
    """First download and compile warm-up: the startup probe waits as long as the compose
    healthcheck's start_period before Kubernetes restarts the pod."""
    startup = container(rendered("gpu"), service)["startupProbe"]
    compose_start = seconds(project()["services"][service]["healthcheck"]["start_period"])
    assert probe_budget(startup) >= compose_start


# -- GPUs, volumes, Redis -----------------------------------------------------------------------


@per_overlay
def test_each_model_service_gets_one_gpu_on_a_gpu_node_and_nothing_else_does(overlay: str) -> None:
    resources = rendered(overlay)
    for resource in (r for r in resources if pod_spec(r) is not None):
        name = resource["metadata"]["name"]
        limits = [c.get("resources", {}).get("limits", {}) for c in containers_of(resource)]
        gpus = [limit.get("nvidia.com/gpu") for limit in limits]
        spec = pod_spec(resource)
        assert spec is not None
        if name in MODEL_SERVICES:
            assert gpus == [1], name
            # The documented knobs: GPU Feature Discovery's label, the usual GPU-node taint.
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
                "tolerations"
            ]
        else:
            assert gpus == [None] * len(gpus), f"{name} needs no GPU"
            assert "tolerations" not in spec, f"{name} stays off the GPU nodes"


@pytest.mark.parametrize("service", MODEL_SERVICES)
def test_model_services_keep_their_hf_cache_on_a_volume_of_their_own(service: str) -> None:
    resources = rendered("gpu")
    statefulset = find(resources, "StatefulSet", service)
    spec = container(resources, service)
    (mount,) = spec["volumeMounts"]
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims, "one cache volume per replica, kept across restarts"
    env = env_sources(resources, spec)
    compose_env = project()["services"][service]["environment"]
    for var in ("HF_HOME", f"{PREFIX}CACHE_DIR"):
        assert env[var] == compose_env[var]
        assert env[var].startswith(mount["mountPath"] + "/")
    assert env["HF_TOKEN"] == ""  # from the Secret, empty until set


@per_overlay
def test_no_pod_shares_a_volume_data_dir_is_scratch(overlay: str) -> None:
    resources = rendered(overlay)
    for name in ("gateway", "worker"):
        deployment = find(resources, "Deployment", name)
        spec = container(resources, name)
        data_dir = env_sources(resources, spec)[f"{PREFIX}DATA_DIR"]
        (mount,) = [m for m in spec["volumeMounts"] if m["mountPath"] == data_dir]
        (volume,) = [
            v
            for v in deployment["spec"]["template"]["spec"]["volumes"]
            if v["name"] == mount["name"]
        ]
        assert volume == {"name": mount["name"], "emptyDir": {}}
    access = [
        mode
        for r in resources
        for t in r.get("spec", {}).get("volumeClaimTemplates", [])
        for mode in t["spec"]["accessModes"]
    ]
    assert access and set(access) == {"ReadWriteOnce"}


def test_redis_keeps_its_data_like_compose() -> None:
    resources = rendered("gpu")
    compose_redis = project()["services"]["redis"]
    spec = container(resources, "redis")
    assert spec["image"] == compose_redis["image"]
    assert spec.get("command", []) + spec["args"] == compose_redis["command"]
    (mount,) = spec["volumeMounts"]
    assert mount["mountPath"] == compose_redis["volumes"][0].split(":")[1]
    claims = find(resources, "StatefulSet", "redis")["spec"]["volumeClaimTemplates"]
    assert [t["metadata"]["name"] for t in claims] == [mount["name"]]
    for kind in ("readinessProbe", "livenessProbe"):
        assert ["sh", "-c", *spec[kind]["exec"]["command"][2:]] == healthcheck_argv(
            compose_redis["healthcheck"]["test"]
        )


# -- the workers and KEDA -----------------------------------------------------------------------


def worker_queues() -> list[str]:
    """The queues `articleforge worker` listens on by default (what the Deployment runs)."""
    command = typer.main.get_command(cli_app).commands["worker"]
    (option,) = [p for p in command.params if p.name == "queues"]
    return [q.strip() for q in option.default.split(",")]


def test_the_worker_runs_a_pool_and_stops_like_compose() -> None:
    resources = rendered("gpu")
    deployment = find(resources, "Deployment", "worker")
    assert "replicas" not in deployment["spec"], "KEDA's HPA owns the count"
    spec = container(resources, "worker")
    env = {v["name"]: v.get("value") for v in spec["env"]}
    pool = env[f"{PREFIX}WORKER_POOL_SIZE"]
    field = SETTINGS["worker"].model_fields["worker_pool_size"]
    bounds = {type(m).__name__: m for m in field.metadata}
    assert bounds["Ge"].ge <= int(pool) <= bounds["Le"].le
    compose_worker = project()["services"]["worker"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= seconds(compose_worker["stop_grace_period"])
    # Ready once registered in Redis, the compose check; never a liveness probe (an outage of
    # Redis would restart every worker).
    assert spec["readinessProbe"]["exec"]["command"] == healthcheck_argv(
        compose_worker["healthcheck"]["test"]
    )
    assert "livenessProbe" not in spec
    assert spec["image"] == container(resources, "gateway")["image"]


@per_overlay
def test_keda_scales_the_workers_on_the_queues_they_take_jobs_from(overlay: str) -> None:
    resources = rendered(overlay)
    scaled = find(resources, "ScaledObject", "worker")["spec"]
    assert scaled["scaleTargetRef"] == {"name": "worker"}  # a Deployment, KEDA's default kind
    find(resources, "Deployment", "worker")
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    assert sorted(worker_queues()) == sorted([ARTICLES_QUEUE, IMAGES_QUEUE])
    # RQ's own key of each queue (a Redis list of the ids of the jobs waiting), from rq itself:
    # Redis() connects only on a command, and none is sent.
    lists = {Queue(name, connection=Redis()).key for name in (ARTICLES_QUEUE, IMAGES_QUEUE)}
    triggers = scaled["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    assert {t["metadata"]["listName"] for t in triggers} == lists
    # The same Redis as the workers', as KEDA's operator (in its own namespace) reaches it.
    url = urlsplit(env_sources(resources, container(resources, "worker"))[f"{PREFIX}REDIS_URL"])
    host = url.hostname
    if host == "redis":
        host = f"redis.{NAMESPACE}.svc"
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["address"] == f"{host}:{url.port or 6379}"
        assert meta["databaseIndex"] == (url.path.strip("/") or "0")
        assert meta.get("enableTLS", "false") == ("true" if url.scheme == "rediss" else "false")
        if url.password:
            auth = find(resources, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            refs = auth["spec"]["secretTargetRef"]
            assert "password" in {r["parameter"] for r in refs}
            for ref in refs:
                assert ref["key"] in secret_data(find(resources, "Secret", ref["name"]))


def test_external_redis_drops_ours_and_points_everything_at_theirs() -> None:
    resources = rendered("external-redis")
    assert not [r for r in resources if r["metadata"]["name"] == "redis"]
    config = find(resources, "ConfigMap", "articleforge-config")["data"]
    assert f"{PREFIX}REDIS_URL" not in config, "the URL holds a password: the Secret has it"
    for name in ("gateway", "worker"):
        url = env_sources(resources, container(resources, name))[f"{PREFIX}REDIS_URL"]
        assert urlsplit(url).scheme == "rediss" and urlsplit(url).hostname != "redis"
    # Everything else is the gpu overlay's.
    others = [r for r in rendered("gpu") if r["metadata"]["name"] != "redis"]
    keep = {(r["kind"], r["metadata"]["name"]) for r in resources}
    assert {(r["kind"], r["metadata"]["name"]) for r in others} <= keep


def test_the_ingress_publishes_the_gateway_at_its_public_url() -> None:
    resources = rendered("ingress")
    (ingress,) = [r for r in resources if r["kind"] == "Ingress"]
    public = urlsplit(
        env_sources(resources, container(resources, "gateway"))[f"{PREFIX}PUBLIC_URL"]
    )
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == public.hostname and public.scheme == "https"
    assert public.hostname in ingress["spec"]["tls"][0]["hosts"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == "gateway"
    ports = find(resources, "Service", "gateway")["spec"]["ports"]
    assert backend["port"]["name"] in {p["name"] for p in ports}
    # Progress is Server-Sent Events: the proxy must not buffer them.
    assert (
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    )


# -- docs ---------------------------------------------------------------------------------------


def test_the_deployment_doc_gives_the_kubernetes_recipe() -> None:
    doc = (REPO / "docs" / "deployment.md").read_text()
    match = re.search(r"^## Kubernetes\n(.*?)(?=^## )", doc, re.DOTALL | re.MULTILINE)
    assert match, "docs/deployment.md has no '## Kubernetes' section"
    section = match[1]
    named = set(re.findall(r"kubectl apply -k deploy/kubernetes/overlays/([a-z0-9-]+)", section))
    assert named == set(OVERLAYS)
    for needed in (f"{PREFIX}WORKER_POOL_SIZE", "nvidia.com/gpu", "KEDA", "ScaledObject"):
        assert needed in section, needed
    worker = find(rendered("gpu"), "ScaledObject", "worker")["spec"]
    for field in ("minReplicaCount", "maxReplicaCount", "listLength"):
        assert field in section, field
    assert f"`maxReplicaCount: {worker['maxReplicaCount']}`" in section

"""docker-compose.yml, the CPU override, the Dockerfiles and .env.example agree with the code.

No Docker engine runs here, so these read the files and hold them against what they name: the
settings classes, the `articleforge` CLI, the FastAPI routes, pyproject's extras and the
metrics. A rename on either side fails here instead of on an operator's GPU host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from typing import Any

import pytest
import yaml

from services.ui.launch import DEFAULT_PORT as UI_PORT
from services.ui.launch import HEALTH_PATH as UI_HEALTH_PATH
from tests.deploy.compose import (
    COMPOSE,
    COMPOSE_CPU,
    DOCKERFILE_VARS,
    DOCKERFILES,
    ENV_EXAMPLE,
    NON_PROJECT_VARS,
    PREFIX,
    REPO,
    SETTINGS,
    all_setting_names,
    app_for,
    container_port,
    default_port,
    environment,
    extras_installed,
    health_path,
    healthcheck_argv,
    load_yaml,
    parse_cli,
    parse_dockerfile,
    project,
    seconds,
    serves,
    setting_names,
    urls_in,
    variables_in,
)

HTTP_SERVICES = ("text", "image", "gateway")
BOTH = pytest.mark.parametrize("cpu", [False, True], ids=["gpu", "cpu"])


# -- compose: services, settings, commands, ports, health ---------------------------------------


def test_compose_runs_the_services_of_the_design_and_the_studio() -> None:
    services = project()["services"]
    assert set(services) == {"redis", "text", "image", "gateway", "worker", "ui"}
    dockerfiles = {name: s["build"]["dockerfile"] for name, s in services.items() if "build" in s}
    assert dockerfiles == {
        "text": "Dockerfile.text",
        "image": "Dockerfile.image",
        "gateway": "Dockerfile.gateway",
        "worker": "Dockerfile.gateway",  # workers never load a model: the gateway's slim image
        "ui": "Dockerfile.ui",
    }
    for name in dockerfiles.values():
        assert (REPO / name).is_file(), name


@BOTH
def test_every_environment_variable_is_a_setting_of_its_service(cpu: bool) -> None:
    services = project(cpu=cpu)["services"]
    assert not environment(services["redis"])
    for name, cls in SETTINGS.items():
        for var in environment(services[name]):
            if var.startswith(PREFIX):
                assert var in setting_names(cls), f"{name}: {var} is not a {cls.__name__} field"
            else:
                assert var in NON_PROJECT_VARS, f"{name}: {var} is neither a setting nor allowed"


@BOTH
def test_every_value_the_compose_file_sets_passes_the_settings_validation(
    cpu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = project(cpu=cpu)["services"]
    for name, cls in SETTINGS.items():
        with monkeypatch.context() as patch:
            for var in [v for v in os.environ if v.startswith(PREFIX)]:
                patch.delenv(var)
            for var, value in environment(services[name]).items():
                patch.setenv(var, value)
            cls(_env_file=None)  # raises with the settings' own message on a bad value


def test_the_gpu_stack_defaults_to_the_real_models_and_takes_them_from_env() -> None:
    text = environment(project()["services"]["text"])
    assert text["ARTICLEFORGE_TEXT_MODEL"] == "NousResearch/Llama-2-7b-chat-hf"
    assert text["ARTICLEFORGE_TEXT_QUANTIZATION"] == "none"
    assert "ARTICLEFORGE_TEXT_ADAPTER" in text
    image = environment(project()["services"]["image"])
    assert image["ARTICLEFORGE_IMAGE_MODEL"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"

    chosen = {
        "ARTICLEFORGE_TEXT_QUANTIZATION": "nf4",
        "ARTICLEFORGE_TEXT_ADAPTER": "/adapters/paper",
        "ARTICLEFORGE_IMAGE_MODEL": "stabilityai/sd-turbo",
        "TEXT_GPU_ID": "0",
        "IMAGE_GPU_ID": "1",
    }
    services = project(variables=chosen)["services"]
    assert environment(services["text"])["ARTICLEFORGE_TEXT_QUANTIZATION"] == "nf4"
    assert environment(services["text"])["ARTICLEFORGE_TEXT_ADAPTER"] == "/adapters/paper"
    assert environment(services["image"])["ARTICLEFORGE_IMAGE_MODEL"] == "stabilityai/sd-turbo"
    assert gpu_ids(services["text"]) == ["0"] and gpu_ids(services["image"]) == ["1"]


def gpu_ids(service: dict[str, Any]) -> list[str] | None:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    for device in devices.get("devices", []):
        if device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", []):
            return [str(i) for i in device["device_ids"]]
    return None


def test_gpu_services_reserve_a_gpu_and_the_cpu_override_runs_tiny_models_without() -> None:
    gpu, cpu = project()["services"], project(cpu=True)["services"]
    for name in ("text", "image"):
        assert gpu_ids(gpu[name]) == ["0"], name  # one card shared unless the ids say otherwise
        assert gpu_ids(cpu[name]) is None, name
        assert environment(cpu[name])[f"ARTICLEFORGE_{name.upper()}_MODEL"] == "tiny"
    for name in ("redis", "gateway", "worker", "ui"):
        assert gpu_ids(gpu[name]) is None, name
    # Only the model services change; the CPU try-out runs the same commands.
    assert {n: s.get("command") for n, s in gpu.items()} == {
        n: s.get("command") for n, s in cpu.items()
    }


@BOTH
def test_every_command_is_a_real_articleforge_command(cpu: bool) -> None:
    services = project(cpu=cpu)["services"]
    for name in SETTINGS:
        parse_cli(services[name]["command"])
    assert parse_cli(services["worker"]["command"]) == ["worker"]
    for name in HTTP_SERVICES:
        command = services[name]["command"]
        assert command[:3] == ["articleforge", "serve", name]
        # Listening on the loopback inside a container would make the service unreachable.
        assert command[command.index("--host") + 1] == "0.0.0.0"
    assert services["redis"]["command"][0] == "redis-server"


@BOTH
def test_ports_and_urls_match_the_settings_defaults(cpu: bool) -> None:
    services = project(cpu=cpu)["services"]
    for name in HTTP_SERVICES:
        port = default_port(name)
        assert [container_port(p) for p in services[name]["ports"]] == [port], name
        assert "--port" not in services[name]["command"]
        pinned = environment(services[name]).get(f"ARTICLEFORGE_{name.upper()}_PORT")
        assert pinned in (None, str(port)), name
        (url,) = urls_in(healthcheck_argv(services[name]["healthcheck"]["test"]))
        assert url.startswith(f"http://127.0.0.1:{port}/"), url
    for name in ("gateway", "worker"):
        env = environment(services[name])
        assert env["ARTICLEFORGE_TEXT_URL"] == f"http://text:{default_port('text')}"
        assert env["ARTICLEFORGE_IMAGE_URL"] == f"http://image:{default_port('image')}"
        assert env["ARTICLEFORGE_REDIS_URL"].startswith("redis://redis:6379/")
        assert env["ARTICLEFORGE_PUBLIC_URL"].endswith(f":{default_port('gateway')}")
    assert "ports" not in services["worker"] and "ports" not in services["redis"]


def test_healthchecks_point_at_real_endpoints() -> None:
    services = project()["services"]
    for name in HTTP_SERVICES:
        app = app_for(name)
        for path in ("/healthz", "/readyz", "/metrics"):
            assert serves(app, path), f"{name} has no {path}"
        assert not serves(app, "/no-such-path")
        (url,) = urls_in(healthcheck_argv(services[name]["healthcheck"]["test"]))
        path = url.split(f":{default_port(name)}", 1)[1]
        assert path == "/readyz" and serves(app, path), url
    for name, service in services.items():
        assert healthcheck_argv(service["healthcheck"]["test"]), name
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    # A first start downloads ~13.5 GB and loads 7B parameters before /readyz says 200.
    assert seconds(services["text"]["healthcheck"]["start_period"]) >= 15 * 60
    assert seconds(services["image"]["healthcheck"]["start_period"]) >= 5 * 60


def test_volumes_keep_the_queue_the_caches_the_adapters_and_the_articles() -> None:
    model = project()
    services = model["services"]
    assert set(model["volumes"]) == {"redis-data", "hf-cache-text", "hf-cache-image", "data"}

    def mounts(name: str) -> dict[str, str]:
        return {v.split(":")[0]: v.split(":")[1] for v in services[name]["volumes"]}

    redis = services["redis"]
    assert mounts("redis")["redis-data"] == "/data"
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"

    for name in ("text", "image"):
        cache = mounts(name)[f"hf-cache-{name}"]
        env = environment(services[name])
        assert env["HF_HOME"].startswith(cache + "/"), name
        assert env["ARTICLEFORGE_CACHE_DIR"].startswith(cache + "/"), name
    assert "/adapters" in mounts("text").values()
    assert services["text"]["volumes"][1].endswith(":/adapters:ro")

    for name in ("gateway", "worker"):
        assert mounts(name)["data"] == environment(services[name])["ARTICLEFORGE_DATA_DIR"]


def test_the_worker_replica_count_is_a_variable() -> None:
    raw = load_yaml(COMPOSE)["services"]["worker"]["deploy"]["replicas"]
    assert re.fullmatch(r"\$\{WORKER_REPLICAS:-\d+\}", raw), raw
    assert project(variables={"WORKER_REPLICAS": "6"})["services"]["worker"]["deploy"] == {
        "replicas": "6"
    }


@BOTH
def test_the_studio_talks_to_the_gateway_and_the_services_by_their_compose_names(
    cpu: bool,
) -> None:
    services = project(cpu=cpu)["services"]
    ui = services["ui"]
    assert parse_cli(ui["command"]) == ["ui"]
    assert ui["command"][ui["command"].index("--host") + 1] == "0.0.0.0"
    assert "--port" not in ui["command"]
    env = environment(ui)
    assert env["ARTICLEFORGE_UI_GATEWAY_URL"] == f"http://gateway:{default_port('gateway')}"
    assert env["ARTICLEFORGE_UI_TEXT_URL"] == f"http://text:{default_port('text')}"
    assert env["ARTICLEFORGE_UI_IMAGE_URL"] == f"http://image:{default_port('image')}"
    # Whoever reaches the studio acts with its key: the loopback unless UI_BIND opens it.
    assert ui["ports"] == [f"127.0.0.1:{UI_PORT}:{UI_PORT}"]
    assert ui["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    (url,) = urls_in(healthcheck_argv(ui["healthcheck"]["test"]))
    assert url == f"http://127.0.0.1:{UI_PORT}{UI_HEALTH_PATH}"
    # The CPU try-out runs the studio as it is: its image holds no model library.
    assert project(cpu=True)["services"]["ui"] == project()["services"]["ui"]
    published = project(variables={"UI_BIND": "0.0.0.0", "UI_HOST_PORT": "80"})["services"]["ui"]
    assert published["ports"] == [f"0.0.0.0:80:{UI_PORT}"]


# -- Dockerfiles --------------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_each_dockerfile_installs_only_its_own_extra_in_a_cache_friendly_order(
    service: str,
) -> None:
    dockerfile = parse_dockerfile(REPO / DOCKERFILES[service])
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras_installed(dockerfile) == {service}
    assert service in extras

    base = dockerfile.base_image()
    if service in ("gateway", "ui"):
        assert re.fullmatch(r"python:3\.1[1-9]-slim", base), base
    else:
        assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime", base), base

    copy_pyproject = dockerfile.index("COPY", r"^pyproject\.toml ")
    install_deps = dockerfile.index("RUN", r"pip install -r ")
    copy_code = dockerfile.index("COPY", r"^services ")
    install_code = dockerfile.index("RUN", r"pip install --no-deps ")
    assert copy_pyproject < install_deps < copy_code < install_code
    assert all(not re.match(r"\.\s", c.args) for c in dockerfile.all("COPY")), "COPY . busts caches"

    users = dockerfile.all("USER")
    assert users and users[-1].args not in ("root", "0"), "the service must not run as root"
    assert dockerfile.all("HEALTHCHECK")


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_each_dockerfile_agrees_with_compose_and_the_settings(service: str) -> None:
    dockerfile = parse_dockerfile(REPO / DOCKERFILES[service])
    compose_service = project()["services"][service]
    assert dockerfile.exec_form("CMD") == compose_service["command"]
    parse_cli(dockerfile.exec_form("CMD"))

    port = default_port(service)
    assert [ins.args for ins in dockerfile.all("EXPOSE")] == [str(port)]
    (url,) = urls_in(dockerfile.exec_form("HEALTHCHECK"))
    assert url == f"http://127.0.0.1:{port}{health_path(service)}"
    options = dockerfile.healthcheck_options()
    assert options["start-period"] == compose_service["healthcheck"]["start_period"]

    for var in dockerfile.env():
        if var.startswith(PREFIX):
            assert var in setting_names(SETTINGS[service]), f"{dockerfile.path.name}: {var}"
        else:
            assert var in DOCKERFILE_VARS, f"{dockerfile.path.name}: {var} needs a reason"
    if service in ("text", "image"):
        # No weights by default; a build argument bakes them in.
        assert dockerfile.arg_defaults()["PRELOAD_MODELS"] == ""
        assert "BASE_IMAGE" in project(cpu=True)["services"][service]["build"]["args"]


MODEL_LIBRARIES = {
    *("torch", "transformers", "diffusers", "peft", "bitsandbytes", "accelerate", "numpy", "PIL"),
    *("safetensors", "tokenizers", "trl", "datasets", "matplotlib"),
}


@pytest.fixture(scope="module")
def gateway_imports() -> dict[str, list[str]]:
    """What the gateway and worker commands import, in a fresh interpreter: the repository's
    own top-level packages, and any model library."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        import services.cli, services.gateway.app, services.gateway.jobs, services.gateway.webhooks

        files = {{}}
        for name, module in list(sys.modules.items()):
            files.setdefault(name.split(".")[0], getattr(module, "__file__", None))
        repo = Path({str(REPO)!r})
        local = [n for n, f in files.items() if f and Path(f).resolve().is_relative_to(repo)]
        print(json.dumps({{"local": sorted(local), "top": sorted(files)}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    return json.loads(out.stdout)


def test_the_gateway_image_runs_without_the_model_libraries(
    gateway_imports: dict[str, list[str]],
) -> None:
    """What compose runs in the slim image imports nothing from the text/image/train extras."""
    assert MODEL_LIBRARIES & set(gateway_imports["top"]) == set()


def test_the_ui_command_runs_with_only_the_ui_extra() -> None:
    """`articleforge ui` up to the exec of Streamlit imports nothing from the other extras, so
    the studio's slim image (the `ui` extra alone) starts."""
    code = textwrap.dedent(
        """
        import json, sys
        import services.cli, services.ui.config, services.ui.launch

        print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    others = MODEL_LIBRARIES | {"fastapi", "starlette", "uvicorn", "redis", "rq", "sse_starlette"}
    assert others & set(json.loads(out.stdout)) == set()


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_each_dockerfile_copies_every_package_the_cli_imports(
    service: str, gateway_imports: dict[str, list[str]]
) -> None:
    dockerfile = parse_dockerfile(REPO / DOCKERFILES[service])
    copied = {c.args.split()[0].strip("./") for c in dockerfile.all("COPY")}
    assert set(gateway_imports["local"]) - copied == set(), "`articleforge` would not start"


# -- .env.example -------------------------------------------------------------------------------


def env_example_names() -> set[str]:
    pattern = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]*)=", re.MULTILINE)
    return set(pattern.findall(ENV_EXAMPLE.read_text()))


def test_env_example_covers_every_setting_and_every_compose_variable() -> None:
    names = env_example_names()
    settings = all_setting_names()
    assert {n for n in names if n.startswith(PREFIX)} <= settings, "unknown settings"
    assert settings - names == set(), "settings missing from .env.example"

    compose_vars = variables_in(load_yaml(COMPOSE)) | variables_in(load_yaml(COMPOSE_CPU))
    assert compose_vars - names == set(), "compose variables missing from .env.example"
    for name in names - settings:
        assert name in compose_vars or name in NON_PROJECT_VARS, name


def test_env_example_sets_nothing_by_default() -> None:
    """Every line is commented out: a fresh copy runs the defaults, and no empty value sneaks in
    (an empty ARTICLEFORGE_WEBHOOK_SECRET, for one, is an error)."""
    live = [
        line
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert live == []


# -- docs ---------------------------------------------------------------------------------------


def test_deployment_doc_names_the_real_metrics_and_scrapes_the_real_ports() -> None:
    doc = (REPO / "docs" / "deployment.md").read_text()
    code = "".join(p.read_text() for p in (REPO / "services").rglob("metrics.py"))
    in_code = set(re.findall(r"\"(articleforge_[a-z_]+)\"", code))
    assert in_code, "no metrics found in services/*/metrics.py"
    in_doc = set(re.findall(r"\barticleforge_(?:text|image|gateway)_[a-z_]+", doc))
    assert in_code - in_doc == set(), "metrics missing from docs/deployment.md"
    assert in_doc - in_code == set(), "docs/deployment.md names metrics the code lacks"

    blocks = re.findall(r"```ya?ml\n(.*?)```", doc, re.DOTALL)
    scrape = [yaml.safe_load(b) for b in blocks if "scrape_configs" in b]
    assert scrape, "no Prometheus scrape config in docs/deployment.md"
    targets = {
        t
        for config in scrape
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for t in group["targets"]
    }
    ports = {int(t.rsplit(":", 1)[1]) for t in targets}
    assert ports == {default_port(name) for name in HTTP_SERVICES}
    assert "docker compose up" in doc and "docker-compose.cpu.yml" in doc


# -- docker compose itself, where it is installed ----------------------------------------------


def docker_compose_missing() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on this machine"
    try:
        version = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker compose version` failed: {exc}"
    if version.returncode != 0:
        detail = (version.stderr or version.stdout).strip().splitlines()
        return f"the docker CLI has no compose plugin ({detail[0] if detail else 'no output'})"
    return None


@pytest.mark.parametrize(
    "files", [["docker-compose.yml"], ["docker-compose.yml", COMPOSE_CPU.name]]
)
def test_docker_compose_config_accepts_the_files(files: list[str]) -> None:
    missing = docker_compose_missing()
    if missing:
        pytest.skip(f"`docker compose config` not run: {missing}")
    args = [a for f in files for a in ("-f", f)]
    result = subprocess.run(
        ["docker", "compose", *args, "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

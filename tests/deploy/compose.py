"""Reads docker-compose files and Dockerfiles the way Docker does, closely enough for tests.

No Docker engine runs here, so the tests check the files by construction: YAML with Compose's
`!reset`/`!override` tags, Compose's merge rules for an override file, `${VAR:-default}`
interpolation, and Dockerfiles read instruction by instruction.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer.main
import yaml
from fastapi import FastAPI
from pydantic_settings import BaseSettings
from starlette.routing import Match

from services.cli import app as cli_app
from services.gateway.config import GatewaySettings
from services.image.config import ImageSettings
from services.text.config import TextSettings
from services.ui.config import UISettings
from services.ui.launch import DEFAULT_PORT as UI_PORT
from services.ui.launch import HEALTH_PATH as UI_HEALTH_PATH

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
PREFIX = "ARTICLEFORGE_"

# The settings class that each compose service's process reads (workers run gateway jobs).
SETTINGS: dict[str, type[BaseSettings]] = {
    "text": TextSettings,
    "image": ImageSettings,
    "gateway": GatewaySettings,
    "worker": GatewaySettings,
    "ui": UISettings,
}
DOCKERFILES = {
    "text": "Dockerfile.text",
    "image": "Dockerfile.image",
    "gateway": "Dockerfile.gateway",
    "ui": "Dockerfile.ui",
}

# Variables without the ARTICLEFORGE_ prefix that the compose files may hand to a container.
NON_PROJECT_VARS = {
    # huggingface_hub's cache root; compose points it into the service's cache volume.
    "HF_HOME",
    # huggingface_hub's token, for gated or private models and adapters.
    "HF_TOKEN",
    # huggingface_hub's switch to never call the Hub (weights baked in or already cached).
    "HF_HUB_OFFLINE",
}
# Variables a Dockerfile may set besides settings: Python and pip behaviour, and HF_HOME.
DOCKERFILE_VARS = NON_PROJECT_VARS | {
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_BREAK_SYSTEM_PACKAGES",
}


def setting_names(cls: type[BaseSettings]) -> set[str]:
    return {PREFIX + name.upper() for name in cls.model_fields}


def all_setting_names() -> set[str]:
    return set().union(*(setting_names(cls) for cls in SETTINGS.values()))


# -- YAML with Compose's tags -------------------------------------------------------------------


@dataclass(frozen=True)
class Reset:
    """`!reset`: remove the attribute that an earlier file set."""


@dataclass(frozen=True)
class Override:
    """`!override`: replace an earlier file's value instead of merging with it."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    pass


def _construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor("!override", lambda loader, node: Override(_construct(loader, node)))


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # ComposeLoader is a SafeLoader


# Sequences that a later file replaces rather than extends (Compose's merge rules).
_REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


def merge(base: Any, override: Any, key: str = "") -> Any:
    """Merges one Compose file over another: mappings key by key, most sequences appended."""
    if isinstance(override, Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for name, value in override.items():
            if isinstance(value, Reset):
                out.pop(name, None)
            elif name in out:
                out[name] = merge(out[name], value, name)
            else:
                out[name] = value.value if isinstance(value, Override) else value
        return out
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED_SEQUENCES:
        return base + [v for v in override if v not in base]
    return override


_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def variables_in(value: Any) -> set[str]:
    """Names of the variables that a loaded Compose model (or a string) interpolates."""
    if isinstance(value, dict):
        return set().union(set(), *(variables_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(variables_in(v) for v in value))
    if isinstance(value, Override):
        return variables_in(value.value)
    if not isinstance(value, str):
        return set()
    return {m["name"] or m["bare"] for m in _VARIABLE.finditer(value) if m[0] != "$$"}


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Fills `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` like Compose."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def fill(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        name = m["name"] or m["bare"]
        op, arg = m["op"] or "", m["arg"] or ""
        present = name in variables
        current = variables.get(name, "")
        if op in (":-", ":?"):
            unset = not current
        else:
            unset = not present
        if op in (":-", "-"):
            return arg if unset else current
        if op in (":?", "?"):
            if unset:
                raise ValueError(f"{name} is required: {arg}")
            return current
        if op in (":+", "+"):
            return "" if unset else arg
        return current

    return _VARIABLE.sub(fill, value)


def project(*, cpu: bool = False, variables: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml (and the CPU override) merged and interpolated, like `compose config`."""
    model = load_yaml(COMPOSE)
    if cpu:
        model = merge(model, load_yaml(COMPOSE_CPU))
    return interpolate(model, variables or {})


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def healthcheck_argv(test: list[str] | str) -> list[str]:
    """A healthcheck's `test` as the argv that Docker runs."""
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    if kind == "CMD-SHELL":
        return ["sh", "-c", " ".join(rest)]
    assert kind == "CMD", f"healthcheck test starts with {kind!r}"
    return rest


def urls_in(argv: list[str]) -> list[str]:
    return re.findall(r"https?://[^\s'\"]+", " ".join(argv))


def container_port(spec: str | dict[str, Any]) -> int:
    """The container side of a `ports:` entry ("[ip:]host:container[/proto]" or long form)."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).rsplit(":", 1)[-1].split("/")[0])


# -- the services themselves: ports, routes, the CLI ------------------------------------------


def default_port(service: str) -> int:
    if service == "ui":  # `articleforge ui --port`, Streamlit's usual port
        return UI_PORT
    return int(SETTINGS[service].model_fields[f"{service}_port"].default)


def health_path(service: str) -> str:
    """What a container's healthcheck asks: /readyz, or Streamlit's own check for the studio."""
    return UI_HEALTH_PATH if service == "ui" else "/readyz"


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def app_for(service: str) -> FastAPI:
    """The service's app from create_app(settings), its lifespan not run (nothing loads)."""
    if service == "text":
        from services.text.app import create_app as create_text
        from services.text.config import TextSettings

        return create_text(TextSettings(_env_file=None))
    if service == "image":
        from services.image.app import create_app as create_image
        from services.image.config import ImageSettings

        return create_image(ImageSettings(_env_file=None))
    from services.gateway.app import create_app as create_gateway
    from services.gateway.config import GatewaySettings

    return create_gateway(GatewaySettings(_env_file=None))


def serves(app: FastAPI, path: str) -> bool:
    """Whether a GET of `path` reaches a route (matched the way Starlette routes a request)."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] is Match.FULL for route in app.router.routes)


def parse_cli(argv: list[str]) -> list[str]:
    """Parses `articleforge ...` as the CLI would, without running it; returns the command path
    (e.g. ["serve"], ["models", "tiny"])."""
    assert argv[0] == "articleforge", argv
    command = typer.main.get_command(cli_app)
    args, path = list(argv[1:]), []
    # Typer ships its own copy of click, so groups are told by their subcommands, not by class.
    while hasattr(command, "commands"):
        assert args, f"{argv}: {' '.join(['articleforge', *path])} needs a subcommand"
        assert args[0] in command.commands, f"{argv}: `{args[0]}` is not an articleforge command"
        command = command.commands[args[0]]
        path.append(args[0])
        args = args[1:]
    command.make_context(path[-1], args)  # raises a usage error on unknown options or bad values
    return path


# -- Dockerfiles --------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def index(self, keyword: str, pattern: str) -> int:
        """Position of the first `keyword` instruction whose arguments match `pattern`."""
        for n, ins in enumerate(self.instructions):
            if ins.keyword == keyword and re.search(pattern, ins.args):
                return n
        raise AssertionError(f"{self.path.name}: no {keyword} matching {pattern!r}")

    def arg_defaults(self) -> dict[str, str]:
        out = {}
        for ins in self.all("ARG"):
            name, _, default = ins.args.partition("=")
            out[name.strip()] = default.strip().strip('"')
        return out

    def base_image(self) -> str:
        (frm,) = self.all("FROM")
        return interpolate(frm.args.split()[0], self.arg_defaults())

    def env(self) -> dict[str, str]:
        out = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                name, _, value = token.partition("=")
                out[name] = value
        return out

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON array of the last CMD (or of HEALTHCHECK's CMD), options dropped."""
        import json

        text = self.all(keyword)[-1].args
        return list(json.loads(text[text.index("[") :]))

    def healthcheck_options(self) -> dict[str, str]:
        args = self.all("HEALTHCHECK")[-1].args
        return dict(re.findall(r"--([a-z-]+)=(\S+)", args.split(" CMD ")[0]))


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined; comments and the parser directive dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path.name}: the last instruction ends with a backslash"
    return Dockerfile(path, instructions)


def extras_installed(dockerfile: Dockerfile) -> set[str]:
    """Extras a Dockerfile installs: `.[extra]` in pip lines and pyproject look-ups by name."""
    found: set[str] = set()
    for ins in dockerfile.all("RUN"):
        for group in re.findall(r"\.\[([A-Za-z0-9_,-]+)\]", ins.args):
            found.update(group.split(","))
        found.update(re.findall(r"\['optional-dependencies'\]\['([A-Za-z0-9_-]+)'\]", ins.args))
    return found

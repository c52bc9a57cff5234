"""The ``articleforge`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import typer
from rich.console import Console

from services.common import limits
from services.ui.launch import DEFAULT_PORT as UI_PORT

if TYPE_CHECKING:
    import httpx

app = typer.Typer(
    help="articleforge: topic in, illustrated article out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)


class Service(StrEnum):
    text = "text"
    image = "image"
    gateway = "gateway"


S = TypeVar("S")


def load_settings(cls: Callable[[], S]) -> S:
    """Reads a settings class from the environment; a bad value exits with its message."""
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            where = f"ARTICLEFORGE_{field.upper()}: " if field else ""
            console.print(f"configuration error: {where}{error['msg']}", markup=False)
        raise typer.Exit(2) from exc


def load_model(kind: Literal["text", "image"], name: str, load: Callable[[], S]) -> S:
    """Runs ``load``; a model that cannot be loaded exits with one sentence that says why and
    what to do (services.common.model_source), not a library's traceback."""
    from services.common.model_source import load_problem

    try:
        return load()
    except Exception as exc:
        problem = load_problem(kind, name, exc)
        if problem is None:
            raise
        console.print(f"error: {problem}", markup=False, style="red", soft_wrap=True)
        raise typer.Exit(1) from None


def quiet_libraries() -> None:
    """Keeps library progress bars and notices off a CLI user's terminal."""
    import logging
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    from services.common.logging import setup_logging

    setup_logging("WARNING")
    # diffusers passes huggingface_hub an argument it deprecated; the user can do nothing about it.
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
    for lib in (hf_logging, diffusers_logging):
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # bitsandbytes asks the `kernels` package for hub kernels; offline it warns on every start.
    logging.getLogger("kernels").setLevel(logging.ERROR)


@app.command()
def serve(
    service: Annotated[Service, typer.Argument(help="Which service to run.")],
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Run one HTTP service (text: 8001, image: 8002, gateway: 8000)."""
    import uvicorn

    from services.common.logging import setup_logging

    if service is Service.text:
        from services.common.model_source import ModelLoadError
        from services.text.app import create_app
        from services.text.config import TextSettings
        from services.text.loading import check_fp8

        settings = load_settings(TextSettings)
        setup_logging(settings.log_level)
        try:
            check_fp8(settings)  # refused before the port is bound: one sentence, exit 2
        except ModelLoadError as exc:
            typer.echo(f"articleforge serve text: {exc}", err=True)
            raise typer.Exit(2) from exc
        application = create_app(settings)
        bind = (host or settings.text_host, port or settings.text_port)
    elif service is Service.image:
        from services.image.app import create_app as create_image_app
        from services.image.config import ImageSettings

        image_settings = load_settings(ImageSettings)
        setup_logging(image_settings.log_level)
        application = create_image_app(image_settings)
        bind = (host or image_settings.image_host, port or image_settings.image_port)
    else:
        from services.gateway.app import create_app as create_gateway_app
        from services.gateway.config import GatewaySettings

        gateway_settings = load_settings(GatewaySettings)
        setup_logging(gateway_settings.log_level)
        application = create_gateway_app(gateway_settings)
        bind = (host or gateway_settings.gateway_host, port or gateway_settings.gateway_port)
    uvicorn.run(application, host=bind[0], port=bind[1], log_config=None, access_log=False)


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated RQ queues, in priority order.")
    ] = "articles,images",
    burst: Annotated[bool, typer.Option(help="Exit when the queues are empty.")] = False,
    name: Annotated[
        str | None,
        typer.Option(
            help="The pool's name; its workers are NAME.1, NAME.2, ... (default: random)."
        ),
    ] = None,
    pool_size: Annotated[
        int | None,
        typer.Option(
            help="RQ workers in this process's pool (default: ARTICLEFORGE_WORKER_POOL_SIZE).",
            min=1,
            max=256,
        ),
    ] = None,
) -> None:
    """Run a pool of RQ workers for the article pipeline (they never load a model)."""
    import secrets

    from services.common.logging import redact, redact_url, redact_values, setup_logging
    from services.gateway.config import GatewaySettings
    from services.gateway.job_base import redis_connection, settings
    from services.gateway.worker import ArticlePool

    load_settings(GatewaySettings)  # a bad setting exits with its variable, not a traceback
    config = settings()
    setup_logging(config.log_level)
    redact_values(config.publish_secrets())
    connection = redis_connection(config)
    try:
        connection.ping()
    except Exception as exc:
        # Redacted: the URL may hold Redis's password, and the console bypasses logging.
        console.print(f"[red]no Redis at {redact_url(config.redis_url)}: {redact(str(exc))}[/red]")
        raise typer.Exit(1) from exc
    from services.gateway.storage import StorageError

    try:
        config.resolved_webhook_secret()
    except StorageError as exc:  # the secrets live in the object store, and it does not answer
        console.print(f"error: {exc}", markup=False, style="red", soft_wrap=True)
        raise typer.Exit(1) from exc
    names = [q.strip() for q in queues.split(",") if q.strip()]
    size = pool_size or config.worker_pool_size
    pool = ArticlePool(names, connection, size, name or f"pool-{secrets.token_hex(4)}")
    pool.start(burst=burst, logging_level=config.log_level)


@app.command()
def generate(
    topic: Annotated[str, typer.Argument(help="What the article is about.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("article"),
    images: Annotated[
        int, typer.Option(help="Images (first is featured).", min=0, max=limits.MAX_IMAGES)
    ] = 1,
    sections: Annotated[
        int | None,
        typer.Option(
            help="Body sections (default: the API's default).", min=1, max=limits.MAX_SECTIONS
        ),
    ] = None,
    words: Annotated[
        int,
        typer.Option(help="Target length in words.", min=limits.MIN_WORDS, max=limits.MAX_WORDS),
    ] = 400,
    audience: Annotated[str | None, typer.Option(help="Who reads it.")] = None,
    tone: Annotated[str | None, typer.Option(help="How it sounds.")] = None,
    language: Annotated[
        str | None, typer.Option(help="Language tag to write in, such as de (default: en).")
    ] = None,
    style: Annotated[str | None, typer.Option(help="Image style, appended to prompts.")] = None,
    size: Annotated[
        str | None, typer.Option(help="Image size, WIDTHxHEIGHT (default: the model's own).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.", min=1, max=limits.MAX_STEPS)] = 25,
    seed: Annotated[
        int | None, typer.Option(help="Seed for text and images.", min=0, max=limits.MAX_SEED)
    ] = None,
    image_prompt: Annotated[
        list[str] | None, typer.Option(help="Image prompt by hand (repeat, one per image).")
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            help="A source to write from and cite (repeat): an http(s) URL, or a file "
            "(HTML, Markdown, text, PDF, DOCX).",
        ),
    ] = None,
    require_citations: Annotated[
        bool, typer.Option(help="With sources: write a section again when it cites nothing.")
    ] = False,
) -> None:
    """Write and illustrate an article in this process (no servers, no Redis)."""
    from pydantic import ValidationError
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from services.gateway.generate import SourcesUnusable, run_pipeline
    from services.gateway.local import LocalImage, LocalText
    from services.gateway.schemas import ArticleRequest
    from services.image.config import ImageSettings
    from services.image.engine import ImageEngine
    from services.image.loading import load_image_pipeline
    from services.text.config import TextSettings
    from services.text.engine import TextEngine
    from services.text.loading import load_text_model

    quiet_libraries()
    try:
        request = ArticleRequest.model_validate(
            {
                "topic": topic,
                "audience": audience,
                "tone": tone,
                # Absent, the request's own default applies: one default for CLI and API.
                **({} if sections is None else {"sections": sections}),
                **({} if language is None else {"language": language}),
                "target_words": words,
                "text": {"seed": seed},
                "images": {
                    "count": images,
                    "size": size,
                    "steps": steps,
                    "style": style,
                    "seed": seed,
                },
                "image_prompts": image_prompt or None,
                "sources": _source_specs(source or []),
                "require_citations": require_citations,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        said = escape(str(first["msg"]).removeprefix("Value error, "))
        console.print(f"[red]{where}: {said}[/red]", soft_wrap=True)  # one line, never cut
        raise typer.Exit(2) from exc

    text_settings, image_settings = load_settings(TextSettings), load_settings(ImageSettings)
    with console.status(f"loading {text_settings.text_model} and {image_settings.image_model}"):
        loaded = load_model(
            "text", text_settings.text_model, lambda: load_text_model(text_settings)
        )
        image_engine = None
        if images:
            pipe = load_model(
                "image", image_settings.image_model, lambda: load_image_pipeline(image_settings)
            )
        text_engine = TextEngine(text_settings, loaded)
        text_engine.start()
        if images:
            image_engine = ImageEngine(image_settings, pipe)
            image_engine.start()

    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as bar:
            tasks: dict[str, object] = {}

            def on_progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)  # type: ignore[arg-type]

            article = asyncio.run(
                run_pipeline(
                    request,
                    LocalText(text_engine),
                    LocalImage(image_engine) if image_engine else None,
                    out,
                    on_progress,
                    lambda line: console.print(f"[yellow]{line}[/yellow]"),
                )
            )
    except SourcesUnusable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    finally:
        text_engine.shutdown()
        if image_engine is not None:
            image_engine.shutdown()
    console.print(
        f"[bold]{article.title}[/bold]: {article.word_count} words, {len(article.images)} images"
    )
    for name in ("article.json", "article.md", "article.html"):
        print(out / name)
    for ref in article.images:
        print(out / ref.url)


def _source_specs(values: list[str]) -> list[dict[str, str]]:
    """``--source`` values as request sources: URLs as they are, files read and encoded."""
    import base64

    specs = []
    for value in values:
        if value.startswith(("http://", "https://")):
            specs.append({"type": "url", "url": value})
            continue
        path = Path(value)
        if not path.is_file():
            console.print(f"[red]--source: {value!r} is neither an http(s) URL nor a file[/red]")
            raise typer.Exit(2)
        data = base64.b64encode(path.read_bytes()).decode()
        specs.append({"type": "file", "filename": path.name, "content_base64": data})
    return specs


class PostStatus(StrEnum):
    draft = "draft"
    publish = "publish"


BATCH_POLL_SECONDS = 1.0  # between two looks at a running batch (one small GET each)
BATCH_PUBLISH_MOVING = ("queued", "publishing")


@app.command()
def batch(
    csv_file: Annotated[
        Path,
        typer.Argument(
            help="The CSV: a `topic` column, and optionally the others of docs/api.md, "
            '"Batches" (keywords, sections, words, images, publish_target, ...).',
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    url: Annotated[str, typer.Option(help="The gateway's URL.")] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(help="Bearer key (default: the first of ARTICLEFORGE_API_KEYS, if any)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for people.")] = None,
    target: Annotated[
        str | None,
        typer.Option(help="Publish every item into this target (wordpress, ghost)."),
    ] = None,
    status: Annotated[
        PostStatus | None,
        typer.Option(help="Post status for --target (without a calendar)."),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="Publish on a calendar from this day or moment: 2026-12-08, 2026-12-08T09:00."
        ),
    ] = None,
    every: Annotated[
        str | None, typer.Option(help="Calendar step: 30m, 12h, 1d, 2w (default 1d).")
    ] = None,
    times: Annotated[
        str | None, typer.Option(help="Calendar clock times on each day: 09:00,17:30.")
    ] = None,
    timezone: Annotated[
        str | None, typer.Option(help="IANA time zone of the calendar (default UTC).")
    ] = None,
    link_related: Annotated[
        bool, typer.Option(help="Link each post to the batch's other posts it mentions.")
    ] = False,
    defaults: Annotated[
        str | None,
        typer.Option(
            help='Article request fields for every item, as JSON: \'{"language": "de"}\'.'
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Sending again with this key gives the same batch.")
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Print the batch id and return at once.")
    ] = False,
) -> None:
    """Send a CSV of topics to a running gateway as one batch, then follow it to its end.

    Prints the batch id (stdout). Exit code: 0 succeeded, 1 failed or cancelled (or no
    gateway answers), 2 refused (the message names the field). Ctrl-C stops following only."""
    import httpx

    options = _batch_options(
        name, target, status, start, every, times, timezone, link_related, defaults
    )
    if api_key is None:
        from services.gateway.config import GatewaySettings

        api_key = next(iter(load_settings(GatewaySettings).keys()), None)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as client:
        try:
            reply = client.post(
                "/v1/batches",
                files={"file": (csv_file.name, csv_file.read_bytes(), "text/csv")},
                data={"options": json.dumps(options, ensure_ascii=False)},
            )
        except httpx.TransportError as exc:
            _no_gateway(url, exc)
        if reply.status_code >= 400:
            _refused(reply, "the batch")
        batch_id = str(reply.json()["id"])
        # stdout, for scripts: `id=$(articleforge batch topics.csv --no-wait)`
        print(batch_id, flush=True)
        if reply.headers.get("Idempotent-Replayed") == "true":
            _say(f"batch {batch_id}: already sent with this --idempotency-key")
        if no_wait:
            return
        try:
            outcome, line = _follow_batch(client, batch_id, url)
        except KeyboardInterrupt:
            _say(
                f"stopped following batch {batch_id}; it goes on. Follow it with "
                f"`curl {url}/v1/batches/{batch_id}` or on the studio's Batches page; cancel "
                f"it with `curl -X DELETE {url}/v1/batches/{batch_id}` (with your key: "
                "`-H 'Authorization: Bearer …'`)."
            )
            raise typer.Exit(130) from None
    _say(f"batch {batch_id} {outcome}: {line}", "green" if outcome == "succeeded" else "red")
    raise typer.Exit(0 if outcome == "succeeded" else 1)


def _say(message: str, style: str | None = None) -> None:
    console.print(message, style=style, markup=False, highlight=False, soft_wrap=True)


def _usage_error(message: str) -> NoReturn:
    _say(message, "red")
    raise typer.Exit(2)


def _batch_options(
    name: str | None,
    target: str | None,
    status: PostStatus | None,
    start: str | None,
    every: str | None,
    times: str | None,
    timezone: str | None,
    link_related: bool,
    defaults: str | None,
) -> dict[str, Any]:
    """The options as `BatchOptions` JSON: only what was given, so the gateway's defaults
    apply and its 422 names the field."""
    options: dict[str, Any] = {"link_related": link_related}
    if name is not None:
        options["name"] = name
    base: Any = {}
    if defaults is not None:
        try:
            base = json.loads(defaults)
        except ValueError as exc:
            _usage_error(f"--defaults is not JSON ({exc})")
        if not isinstance(base, dict):
            _usage_error("--defaults must be a JSON object")
    if target is not None or status is not None:
        publish = base.get("publish")
        publish = dict(publish) if isinstance(publish, dict) else {}
        publish.update({"target": target} if target else {})
        publish.update({"status": status.value} if status else {})
        base["publish"] = publish
    if base:
        options["defaults"] = base
    if start is None and (every or times or timezone):
        _usage_error("--every, --times and --timezone shape a calendar: give --start too")
    if start is not None:
        schedule: dict[str, Any] = {"start": start}
        if every:
            schedule["every"] = every
        if times:
            schedule["times"] = [t.strip() for t in times.split(",") if t.strip()]
        if timezone:
            schedule["timezone"] = timezone
        options["schedule"] = schedule
    return options


def _refused(reply: httpx.Response, what: str) -> NoReturn:
    """The gateway's error reply as one sentence naming its field; exit 2 for a refusal (4xx),
    1 for a failure (5xx)."""
    try:
        error = reply.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = str(error.get("message") or reply.text[:300] or reply.reason_phrase)
    if reply.status_code == 401:
        message += " (pass --api-key, or set ARTICLEFORGE_API_KEYS)"
    field = f" `{error['param']}`" if error.get("param") else ""
    _say(f"error: the gateway refused {what} ({reply.status_code}){field}: {message}", "red")
    raise typer.Exit(2 if reply.status_code < 500 else 1)


def _no_gateway(url: str, exc: Exception) -> NoReturn:
    _say(
        f"error: no gateway answers at {url} ({exc}); start one with `articleforge up`, "
        "or pass --url",
        "red",
    )
    raise typer.Exit(1)


def _follow_batch(client: httpx.Client, batch_id: str, url: str) -> tuple[str, str]:
    """Shows the batch's progress (ended items of all, counts by status) until it ends;
    returns its outcome and its counts as a line."""
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(batch_id, total=None, counts="")
        while True:
            try:
                reply = client.get(f"/v1/batches/{batch_id}", params={"limit": 0})
            except httpx.TransportError as exc:
                _no_gateway(url, exc)
            if reply.status_code >= 400:
                _refused(reply, f"a look at batch {batch_id}")
            found = reply.json()
            counts = found["counts"]
            by_status: dict[str, int] = counts["by_status"]
            moving = sum(counts["by_publish"].get(s, 0) for s in BATCH_PUBLISH_MOVING)
            ended = int(counts["ended"])  # the article and, where asked, its publish too
            line = " · ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
            line += f" · {moving} publishing" if moving else ""
            bar.update(task, completed=max(0, ended), total=counts["total"], counts=line)
            if found["status"] != "running":
                return str(found["status"]), line
            time.sleep(BATCH_POLL_SECONDS)


NO_STREAMLIT = "the studio needs Streamlit: pip install 'articleforge[ui]'"


def has_streamlit() -> bool:
    """Whether the `ui` extra is installed (found without importing it: that takes a second)."""
    from importlib.util import find_spec

    return find_spec("streamlit") is not None


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = UI_PORT,
) -> None:
    """Run the studio, the Streamlit front end (port 8501); ARTICLEFORGE_UI_* settings."""
    import os

    from services.ui.config import UISettings
    from services.ui.launch import streamlit_command

    load_settings(UISettings)  # a bad setting stops here, not in the browser
    if not has_streamlit():
        console.print(f"error: {NO_STREAMLIT}", markup=False, style="red", soft_wrap=True)
        raise typer.Exit(1)
    argv = streamlit_command(host, port)
    # Streamlit takes this process over, so Ctrl-C and SIGTERM (from `up`, or Docker) reach it.
    os.execv(argv[0], argv)


@app.command()
def up(
    workers: Annotated[
        int | None,
        typer.Option(
            help="RQ workers in the worker pool (default: ARTICLEFORGE_WORKER_POOL_SIZE).",
            min=1,
            max=256,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Bind address for all the services.")] = "127.0.0.1",
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Do not start the studio.")] = False,
    ui_port: Annotated[int, typer.Option(help="Port of the studio.", min=1, max=65535)] = UI_PORT,
    gateway_port: Annotated[
        int | None,
        typer.Option(
            help="Port of the gateway (default: ARTICLEFORGE_GATEWAY_PORT, else 8000).",
            min=1,
            max=65535,
        ),
    ] = None,
    text_port: Annotated[
        int | None,
        typer.Option(
            help="Port of the text service (default: ARTICLEFORGE_TEXT_PORT, else 8001).",
            min=1,
            max=65535,
        ),
    ] = None,
    image_port: Annotated[
        int | None,
        typer.Option(
            help="Port of the image service (default: ARTICLEFORGE_IMAGE_PORT, else 8002).",
            min=1,
            max=65535,
        ),
    ] = None,
) -> None:
    """Start text, image, gateway, workers and the studio locally; Ctrl-C stops them all.

    Every port is checked before anything starts; the workers and the studio are pointed at
    the ports chosen here."""
    from services.gateway.config import GatewaySettings
    from services.image.config import ImageSettings
    from services.launcher import Studio
    from services.launcher import up as launch
    from services.text.config import TextSettings

    gateway = load_settings(GatewaySettings)
    studio = None
    if not no_ui and not has_streamlit():
        console.print(f"{NO_STREAMLIT}; starting without the studio", markup=False)
    elif not no_ui:
        from services.ui.config import UISettings

        # What the user set for the studio stays; `up` fills in only the rest.
        studio = Studio(ui_port, set(load_settings(UISettings).model_fields_set), gateway.keys())
    # An option wins over the setting, as `serve --port` does.
    ports = {
        "text": text_port or load_settings(TextSettings).text_port,
        "image": image_port or load_settings(ImageSettings).image_port,
        "gateway": gateway_port or gateway.gateway_port,
    }

    def redis_ok() -> str | None:
        from redis import Redis

        try:
            Redis.from_url(gateway.redis_url, socket_timeout=2).ping()
        except Exception as exc:
            return f"{gateway.redis_url} does not answer ({exc})"
        return None

    def say(message: str) -> None:
        console.print(message, soft_wrap=True, highlight=False, markup=False)

    # A URL the user set wins; only when none is set does `up` derive one.
    public_url = gateway.public_url if "public_url" in gateway.model_fields_set else None
    raise typer.Exit(
        launch(
            host,
            ports,
            workers or gateway.worker_pool_size,
            redis_ok,
            say,
            public_url=public_url,
            studio=studio,
        )
    )


@models_app.command("tiny")
def models_tiny(
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where to build (default ARTICLEFORGE_CACHE_DIR).")
    ] = None,
    kind: Annotated[str, typer.Option(help="text, image or all.")] = "all",
) -> None:
    """Build the tiny random-weight models (offline, seeded) and print where they are."""
    from services.common.config import CommonSettings
    from services.common.tiny import build_tiny_image, build_tiny_text

    root = cache_dir or load_settings(CommonSettings).resolved_cache_dir()
    if kind in ("text", "all"):
        print(build_tiny_text(root))
    if kind in ("image", "all"):
        print(build_tiny_image(root))


@app.command("generate-text")
def generate_text(
    topic: Annotated[str, typer.Argument(help="What the article is about.")],
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to write.")] = 200,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.7,
    seed: Annotated[int | None, typer.Option(help="Fix the sampling seed.")] = None,
) -> None:
    """Write an article's text in this process (no server), streaming it to stdout."""
    from services.text.config import TextSettings
    from services.text.engine import TextEngine
    from services.text.loading import load_text_model
    from services.text.schemas import GenerateRequest

    quiet_libraries()
    settings = load_settings(TextSettings)
    with console.status(f"loading {settings.text_model} ..."):
        loaded = load_model("text", settings.text_model, lambda: load_text_model(settings))
        engine = TextEngine(settings, loaded)
        engine.start()
    request = GenerateRequest(
        system="You are a skilled writer. Write clear, well-structured articles with a title "
        "and section headings.",
        prompt=f"Write an article about {topic}.",
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )

    async def run() -> None:
        prepared = engine.prepare(request.to_prompt(), request.to_sampling_params(), None, "cli")
        handle = engine.submit(prepared)
        async for delta in handle.stream():
            sys.stdout.write(delta)
            sys.stdout.flush()
        result = handle.result
        assert result is not None
        sys.stdout.write("\n")
        console.print(
            f"[dim]{result.usage.completion_tokens} tokens, {result.finish_reason}, "
            f"seed {result.seed}, {result.tokens_per_second:.1f} tokens/s[/dim]"
        )

    try:
        asyncio.run(run())
    finally:
        engine.shutdown()


def _register_training() -> None:
    from training.cli import eval_command, prepare_command, train_command

    app.command("prepare")(prepare_command)
    app.command("train")(train_command)
    app.command("eval")(eval_command)


_register_training()

if __name__ == "__main__":
    app()

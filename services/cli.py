"""The ``articleforge`` command line."""

from __future__ import annotations

import asyncio
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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
        from services.text.app import create_app
        from services.text.config import TextSettings

        settings = TextSettings()
        setup_logging(settings.log_level)
        application = create_app(settings)
        bind = (host or settings.text_host, port or settings.text_port)
    elif service is Service.image:
        from services.image.app import create_app as create_image_app
        from services.image.config import ImageSettings

        image_settings = ImageSettings()
        setup_logging(image_settings.log_level)
        application = create_image_app(image_settings)
        bind = (host or image_settings.image_host, port or image_settings.image_port)
    else:
        console.print("[red]the gateway is not built yet[/red]")
        raise typer.Exit(2)
    uvicorn.run(application, host=bind[0], port=bind[1], log_config=None, access_log=False)


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

    root = cache_dir or CommonSettings().resolved_cache_dir()
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
    from services.common.logging import setup_logging
    from services.text.config import TextSettings
    from services.text.engine import TextEngine
    from services.text.loading import load_text_model
    from services.text.schemas import GenerateRequest

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    settings = TextSettings()
    setup_logging("WARNING")
    with console.status(f"loading {settings.text_model} ..."):
        engine = TextEngine(settings, load_text_model(settings))
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


if __name__ == "__main__":
    app()

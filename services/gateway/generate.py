"""``articleforge generate``: the whole article pipeline in one process, no servers, no Redis.

The same stage functions the RQ workers run, against in-process engines. Writes
``article.json``, ``article.md``, ``article.html`` and ``images/*.png`` into the output folder.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from services.common.limits import seed_or_random
from services.gateway import assemble, export, grounding, pipeline
from services.gateway.config import GatewaySettings
from services.gateway.local import LocalImage, LocalText
from services.gateway.schemas import Article, ArticleRequest, ImageRef
from services.gateway.sources import load_sources


class SourcesUnusable(Exception):
    """Sources were given and none of them could be used (each one's reason was warned)."""


# (stage, done, total) -> None; the CLI draws a progress bar from it
ProgressFn = Callable[[str, int, int], None]


async def run_pipeline(
    request: ArticleRequest,
    text: LocalText,
    image: LocalImage | None,
    out_dir: Path,
    progress: ProgressFn,
    warn: Callable[[str], None] = print,
) -> Article:
    article_id = "art_" + secrets.token_hex(12)
    text_seed = seed_or_random(request.text.seed)
    image_seed = seed_or_random(request.images.seed)
    timings: dict[str, float] = {}
    started = time.monotonic()

    grounded = None
    if request.sources:
        progress("sources", 0, len(request.sources))
        # On the user's own machine: private addresses (an intranet page) are theirs to use.
        sources = await load_sources(request.sources, allow_private=True)
        progress("sources", len(sources), len(sources))
        timings["sources"] = round(time.monotonic() - started, 3)
        for source in sources:
            if source.error is not None:
                warn(source.error.message)
        if not grounding.usable(sources):
            raise SourcesUnusable(f"none of the {len(sources)} sources could be used")
        # The gateway's ARTICLEFORGE_SOURCES_EMBEDDING_MODEL applies here too (read only with
        # sources, so that a bad gateway setting never stops a plain `generate`).
        config = GatewaySettings()
        grounded = grounding.Grounding(
            sources,
            require=request.require_citations,
            embedding_model=config.sources_embedding_model,
            cache_dir=config.resolved_cache_dir(),
        )

    progress("outline", 0, 1)
    outline = await pipeline.write_outline(
        text, request, text_seed, grounded.sources if grounded else ()
    )
    fallbacks = ["outline"] if outline.fallback else []
    progress("outline", 1, 1)
    timings["outline"] = round(time.monotonic() - started, 3)

    expected = pipeline.estimate_tokens(request)
    tokens = 0

    def on_delta(_: str) -> None:
        nonlocal tokens
        tokens += 1
        progress("sections", min(tokens, expected), expected)

    images: list[ImageRef] = []
    image_model = None
    drawing: dict[int, asyncio.Future[dict[str, object]]] = {}
    wants_images = bool(request.images.count) and image is not None
    steps_done = [0] * request.images.count
    total_steps = request.images.steps * request.images.count

    async def draw(k: int, prompt: str) -> dict[str, object]:
        assert image is not None

        def on_step(step: int, steps: int, preview: str | None) -> None:
            steps_done[k] = step
            progress("images", sum(steps_done), total_steps)

        return await image.generate(pipeline.image_body(request, prompt, image_seed + k), on_step)

    def on_image_prompt(k: int, prompt: str, fell_back: bool) -> None:
        # Drawn at once, beside the text still being written; the image engine batches
        # the images that are waiting together into one pipeline call.
        timings["image_prompts"] = round(time.monotonic() - mark, 3)
        drawing[k] = asyncio.ensure_future(draw(k, prompt))

    mark = time.monotonic()
    try:
        if wants_images:
            bodies, prompts, more = await pipeline.write_text(
                text, request, outline, text_seed, on_delta, None, grounded, on_image_prompt
            )
        else:
            bodies, more = await pipeline.write_sections(
                text, request, outline, text_seed, on_delta, grounded=grounded
            )
        progress("sections", tokens, tokens)
        fallbacks += more
        timings["sections"] = round(time.monotonic() - mark, 3)
        replies = [await drawing[k] for k in sorted(drawing)]
    finally:
        for future in drawing.values():
            future.cancel()

    if wants_images:
        subjects = pipeline.image_subjects(outline, request.images.count)
        timings["images"] = round(time.monotonic() - mark, 3)  # text and images, overlapped
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        for k, reply in enumerate(replies):
            drawn = reply["images"][0]  # type: ignore[index]
            image_model = reply.get("model")
            if drawn.get("nsfw") or not drawn.get("b64_png"):
                fallbacks.append(f"image:{k}:nsfw")
                continue
            name = f"image-{k + 1}.png"
            (out_dir / "images" / name).write_bytes(base64.b64decode(drawn["b64_png"]))
            images.append(
                assemble.image_ref(
                    f"img_{k + 1}",
                    f"images/{name}",
                    prompts[k],
                    int(drawn["seed"]),
                    int(drawn["width"]),
                    int(drawn["height"]),
                    subjects[k],
                    style=request.images.style,
                    language=request.language,
                )
            )

    progress("assemble", 0, 1)
    base, adapter = text.model_info()
    provenance = assemble.provenance(
        request,
        text_model=base,
        adapter=adapter,
        image_model=image_model,  # type: ignore[arg-type]
        text_seed=text_seed,
        image_seeds=[image_seed + k for k in range(request.images.count)],
        timings={**timings, "total": round(time.monotonic() - started, 3)},
        fallbacks=fallbacks,
    )
    article = assemble.assemble(
        article_id, request, outline, bodies, images, provenance, assemble.now_iso(), grounded
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "article.json").write_text(article.model_dump_json(indent=2))
    (out_dir / "article.md").write_text(article.markdown)
    (out_dir / "article.html").write_text(export.html_page(article))
    progress("assemble", 1, 1)
    return article

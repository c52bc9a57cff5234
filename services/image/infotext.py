"""The PNG `parameters` text chunk, in AUTOMATIC1111's "infotext" form, written and read back.

    a lighthouse at dusk, watercolor
    Negative prompt: blurry, text
    Steps: 30, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1234, Size: 512x512, Model: tiny

The prompt comes first (it may span lines), then an optional ``Negative prompt:`` line, then one
line of ``key: value`` pairs; values holding a comma, colon or newline are JSON-quoted. Tools that
read AUTOMATIC1111 images (its PNG Info tab, civitai, ComfyUI loaders) read these too.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

from services.image.schedulers import SAMPLER_TO_SCHEDULER, SCHEDULERS

PNG_KEY = "parameters"
NEGATIVE = "Negative prompt:"
# One `key: value` pair of the last line; the same pattern AUTOMATIC1111 parses with.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@dataclass(frozen=True)
class ImageParameters:
    """What reproduces one image: the fields of a `POST /v1/images` request, plus the model."""

    prompt: str
    negative_prompt: str
    steps: int
    scheduler: str
    guidance_scale: float
    seed: int
    width: int
    height: int
    model: str

    def to_request(self) -> dict[str, Any]:
        """The body of a `/v1/images` request that draws this image again."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "steps": self.steps,
            "scheduler": self.scheduler,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
        }


def _quote(value: object) -> str:
    text = str(value)
    if any(c in text for c in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value
    return value


def format_infotext(p: ImageParameters) -> str:
    lines = [p.prompt]
    if p.negative_prompt:
        lines.append(f"{NEGATIVE} {p.negative_prompt}")
    pairs = {
        "Steps": p.steps,
        "Sampler": SCHEDULERS[p.scheduler].sampler,
        "CFG scale": f"{p.guidance_scale:g}",
        "Seed": p.seed,
        "Size": f"{p.width}x{p.height}",
        "Model": p.model,
    }
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items()))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict[str, str]:
    """Splits an infotext into ``prompt``, ``negative_prompt`` and the raw ``key: value`` pairs."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:  # no parameter line: it is all prompt
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if negative:
            negative.append(line)
        elif line.startswith(NEGATIVE):
            negative.append(line.removeprefix(NEGATIVE).lstrip())
        else:
            prompt.append(line)
    found = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for key, value in _PAIR.findall(last):
        found[key.strip()] = _unquote(value.strip())
    return found


def parse_parameters(text: str) -> ImageParameters:
    """The typed parameters of an infotext written by this service; KeyError when one is missing."""
    raw = parse_infotext(text)
    width, _, height = raw["Size"].partition("x")
    return ImageParameters(
        prompt=raw["prompt"],
        negative_prompt=raw["negative_prompt"],
        steps=int(raw["Steps"]),
        scheduler=SAMPLER_TO_SCHEDULER[raw["Sampler"]],
        guidance_scale=float(raw["CFG scale"]),
        seed=int(raw["Seed"]),
        width=int(width),
        height=int(height),
        model=raw.get("Model", ""),
    )


def encode_png(pixels: Any, p: ImageParameters, compress_level: int = 6) -> bytes:
    """A PNG of an HxWx3 uint8 array, with the parameters in a `parameters` text chunk.

    ``compress_level`` is zlib's 0-9 (Pillow's default is 6). Pillow releases the GIL while it
    compresses, so several threads encode in parallel."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    # tEXt when the text is Latin-1, else PIL writes an iTXt chunk (UTF-8), as AUTOMATIC1111 does.
    info.add_text(PNG_KEY, format_infotext(p))
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", pnginfo=info, compress_level=compress_level)
    return out.getvalue()


def read_parameters(png: bytes) -> ImageParameters:
    """Reads the `parameters` chunk of a PNG written by this service (or by AUTOMATIC1111)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        text = image.info.get(PNG_KEY)
    if not isinstance(text, str):
        raise ValueError(f"the PNG has no {PNG_KEY!r} text chunk")
    return parse_parameters(text)

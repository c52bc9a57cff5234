"""The image playground: one request at a time to the image service, watching the diffusion
steps. It uses the service's own `/v1/images` with `stream: true`, since the OpenAI-compatible
`/v1/images/generations` neither streams progress nor takes steps, guidance or a scheduler."""

from __future__ import annotations

import base64
from typing import Any, get_args

import streamlit as st

from services.image.config import SchedulerName
from services.image.schemas import ImagesRequest
from services.ui.client import ImageClient
from services.ui.common import decode_data_url, settings, show_png, shows_errors
from services.ui.limits import bounds

SERVICE_DEFAULT = "service default"


def _int(label: str, name: str, value: int | None, step: int = 1) -> int | None:
    limit = bounds(ImagesRequest, name)
    number = st.number_input(
        label, limit.int_low(), limit.int_high(), value, step, key=f"image-{name}"
    )
    return None if number is None else int(number)


@shows_errors
def playground() -> None:
    st.title("Image playground")
    client = ImageClient(settings())
    st.caption(f"{client.base_url}/v1/images (streamed: step progress and previews)")
    prompt = st.text_area(
        "Prompt", placeholder="a lighthouse on a cliff at dusk, watercolor", key="image-prompt"
    )
    negative = st.text_input("Negative prompt", key="image-negative")
    left, middle, right = st.columns(3)
    with left:
        width = _int("Width (empty: native)", "width", None, 8)
        height = _int("Height (empty: native)", "height", None, 8)
    with middle:
        steps = _int("Steps (empty: service default)", "steps", None)
        guidance_b = bounds(ImagesRequest, "guidance_scale")
        guidance = st.slider(
            "Guidance (CFG scale)",
            guidance_b.float_low(),
            guidance_b.float_high(),
            7.0,
            0.5,
            key="image-guidance",
        )
    with right:
        scheduler = st.selectbox(
            "Scheduler", (SERVICE_DEFAULT, *get_args(SchedulerName)), key="image-scheduler"
        )
        seed = _int("Seed (empty: random)", "seed", None)
        count = _int("Images", "n", 1) or 1
    if not st.button("Draw", type="primary", key="image-draw"):
        return
    body: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative, "n": count}
    body["guidance_scale"] = guidance
    for name, value in (("width", width), ("height", height), ("steps", steps), ("seed", seed)):
        if value is not None:
            body[name] = value
    if scheduler != SERVICE_DEFAULT:
        body["scheduler"] = scheduler
    bar = st.progress(0.0, text="queued")
    preview = st.empty()
    for event, data in client.draw(body):
        if event == "progress":
            bar.progress(data["step"] / data["steps"], text=f"step {data['step']}/{data['steps']}")
            if data.get("preview_b64"):
                with preview.container():
                    show_png(
                        decode_data_url(data["preview_b64"]),
                        caption=f"preview at step {data['step']}",
                        width=256,
                    )
            continue
        preview.empty()
        bar.progress(1.0, text=f"done in {data['timings']['total_seconds']:.1f} s")
        columns = st.columns(min(len(data["images"]), 4))
        for k, image in enumerate(data["images"]):
            with columns[k % len(columns)]:
                if image.get("b64_png") is None:
                    st.warning(f"seed {image['seed']}: flagged by the safety checker")
                    continue
                png = base64.b64decode(image["b64_png"])
                show_png(png, caption=f"seed {image['seed']}", width=256)
                st.download_button(
                    "PNG", png, file_name=f"image-{image['seed']}.png", key=f"image-png-{k}"
                )


playground()

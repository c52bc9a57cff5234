"""PNG compression level against encode time and size, on photographs.

Random-weight models draw noise, which no level compresses, so this measures on real photos
instead: scikit-image's bundled samples (astronaut, coffee, chelsea, rocket), centre-cropped and
resized to the served sizes (512x512 for SD 1.5 and SD-Turbo, 1024x1024 for SDXL). Each level is
timed through the service's own encoder (with its infotext chunk). Writes JSON to stdout or
--out.

    python bench/png_levels.py --out bench/results/png_levels_<host>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from services.image.infotext import ImageParameters, encode_png

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")


def photos(size: int) -> list[np.ndarray]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in PHOTOS:
        with Image.open(folder / name) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            out.append(np.asarray(image.resize((size, size), Image.Resampling.LANCZOS)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = []
    for size in (512, 1024):
        images = photos(size)
        params = ImageParameters("a photo", "", 25, "dpmpp_2m", 7.5, 1, size, size, "bench")
        for level in range(10):
            times, sizes = [], []
            for pixels in images:
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    png = encode_png(pixels, params, compress_level=level)
                    times.append(time.perf_counter() - started)
                sizes.append(len(png))
            results.append(
                {
                    "side": size,
                    "level": level,
                    "ms_median": round(1000 * statistics.median(times), 2),
                    "kib_mean": round(statistics.mean(sizes) / 1024, 1),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    report = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "photos": PHOTOS,
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

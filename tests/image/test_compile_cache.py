"""The compile cache: a restart loads the compiled graphs that the last start wrote.

The one test here runs torch.compile for real, on the CPU and the tiny pipeline, in two fresh
processes that share a cache folder: the first compiles (about 80 s here), the second loads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.image_bench import warmup_summary
from services.image.config import ImageSettings

ROOT = Path(__file__).resolve().parents[2]

# One start of the engine with compile on and one bucket, then one 2-step image at the warm-up's
# shape, saved for comparison.
START = """
import logging, sys
import numpy as np, torch
from services.image.config import ImageSettings
from services.image.engine import ImageEngine
from services.image.loading import load_image_pipeline

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
settings = ImageSettings(
    image_compile=True, image_batch_buckets="1", image_max_batch_size=1, image_default_steps=2
)
loaded = load_image_pipeline(settings)
ImageEngine(settings, loaded).warmup()
image = loaded.pipe(
    prompt="a lighthouse", num_inference_steps=2, output_type="np",
    generator=torch.Generator().manual_seed(7),
).images
np.save(sys.argv[1], image)
"""


def test_the_compile_cache_folder_follows_the_settings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert ImageSettings(cache_dir=tmp_path).compile_cache_dir() == tmp_path / "compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert ImageSettings(cache_dir=tmp_path).compile_cache_dir() == tmp_path / "inductor"
    named = ImageSettings(cache_dir=tmp_path, image_compile_cache_dir=tmp_path / "mine")
    assert named.compile_cache_dir() == tmp_path / "mine"


@pytest.mark.slow  # torch.compile for real: 126-168 s under `pytest -n 2` on 2 cores
def test_a_restart_loads_its_graphs_from_the_compile_cache(
    tiny_image_path: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(
        ARTICLEFORGE_IMAGE_COMPILE_CACHE_DIR=str(tmp_path / "compile"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    counts, images = [], []
    for start in ("first", "second"):
        out = tmp_path / f"{start}.npy"
        done = subprocess.run(
            [sys.executable, "-c", START, str(out)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        summary = warmup_summary(done.stdout)  # the warm-up's own log line
        assert summary is not None, done.stdout[-3000:]
        counts.append((summary["graphs_loaded"], summary["graphs_compiled"]))
        images.append(np.load(out))
    (loaded_first, compiled_first), (loaded_second, compiled_second) = counts
    # The denoiser and the VAE decoder: at least one graph each.
    assert loaded_first == 0 and compiled_first >= 2, counts
    assert loaded_second == compiled_first and compiled_second == 0, counts
    assert any((tmp_path / "compile").iterdir())
    # The loaded graphs compute what the compiled ones did.
    np.testing.assert_array_equal(images[0], images[1])

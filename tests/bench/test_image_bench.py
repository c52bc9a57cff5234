"""bench/image_bench.py measures the image service on the GPU machine; here it runs end to end on
the CPU with the small random-weight SD-1.5 shape: a real service, real HTTP, the restart on
the same settings, and eager diffusers as the baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.slow
def test_the_image_benchmark_runs_every_scenario_and_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "results" / "image_bench_cpu.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.image_bench",
            "--shape=sd15-small",
            "--device=cpu",
            "--compile=false",
            "--steps=2",
            "--concurrency=1,2",
            "--rounds=1",
            "--max-batch=8",
            "--n8",
            "--stream",
            "--restart",
            "--baseline-batches=1",
            f"--models={tmp_path / 'models'}",
            f"--logs={tmp_path / 'logs'}",
            f"--out={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "error" not in report, report["error"]
    assert report["ready_s"] > 0 and report["build"]["unet_params_M"] > 0
    (run,) = report["runs"]
    assert [level["concurrency"] for level in run["sweep"]] == [1, 2]
    for level in [*run["sweep"], run["n=8"]]:
        assert level["failed"] == 0 and level["errors"] == []
        assert level["s_per_image"] > 0 and level["inference_s_median"] > 0
    assert sum(run["n=8"]["requests_by_batch_size"].values()) == 1
    stream = run["stream"]
    assert stream["stream"]["failed"] == stream["no stream"]["failed"] == 0
    assert stream["stream"]["previews"] == 0  # 2 steps: a preview comes every 5
    # Eager: no compile, so the service logs no compiled-graph counts, and says none were read.
    assert report["warmup"] is None
    restart = report["restart"]
    assert "error" not in restart, restart
    assert restart["ready_s"] > 0 and restart["warmup"] is None
    assert restart["one_request"]["sweep"][0]["failed"] == 0
    (eager,) = report["eager_diffusers"]
    assert eager["batch"] == 1 and eager["steps"] == 2 and eager["s"] > 0
    png = tmp_path / "plot.png"
    plotted = subprocess.run(
        [sys.executable, "-m", "bench.plot_image_bench", str(out), str(png)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plotted.returncode == 0, plotted.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (
            "image_bench_sd15_h200.json",
            "SD-1.5 shape, 512x512, DPM++ 2M 25 steps, CFG 7.5 (NVIDIA H200)",
        ),
        (
            "image_bench_sd-turbo_h200_d220cf7.json",
            "SD-Turbo shape, 512x512, Euler 1/4 steps, no CFG (NVIDIA H200)",
        ),
        (
            "image_bench_sdxl_h200_d220cf7.json",
            "SDXL shape, 1024x1024, Euler 30 steps, CFG 5 (NVIDIA H200)",
        ),
    ],
)
def test_the_plot_titles_name_what_each_stored_report_measured(report: str, expected: str) -> None:
    from bench.plot_image_bench import title

    data = json.loads((ROOT / "bench" / "results" / report).read_text())
    assert title(data) == expected


@pytest.mark.parametrize("shape", ["sd15-small", "sdxl-small", "sd-turbo-small"])
def test_the_native_side_is_what_the_pipeline_draws(shape: str, tmp_path: Path) -> None:
    from diffusers import AutoPipelineForText2Image

    from bench.image_models import build, native_side

    build(shape, tmp_path / shape, device="cpu", dtype="float32")
    pipe = AutoPipelineForText2Image.from_pretrained(tmp_path / shape)
    (image,) = pipe("a lighthouse", num_inference_steps=1, output_type="pil").images
    assert image.size == (native_side(shape), native_side(shape))

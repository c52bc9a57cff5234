"""`articleforge generate`: the whole pipeline in one process, offline, on the tiny models."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import nh3
import pytest
from PIL import Image

from services.gateway.assemble import xhtml
from tests.processes import articleforge_command

pytestmark = pytest.mark.e2e


def test_generate_writes_all_four_outputs(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "article"
    env = {**os.environ, "ARTICLEFORGE_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            *articleforge_command(),
            "generate",
            "The future of solar power",
            "--images",
            "2",
            "--out",
            str(out),
            "--seed",
            "5",
            "--steps",
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    article = json.loads((out / "article.json").read_text())
    assert article["title"] and len(article["images"]) == 2
    assert (out / "article.md").read_text() == article["markdown"]
    page = (out / "article.html").read_text()
    assert page.startswith("<!doctype html>") and article["html"] in page
    # Sanitized (nothing left for a sanitizer to cut) and serialized as well-formed XML.
    assert xhtml(nh3.clean(article["html"])) == article["html"]
    for ref in article["images"]:
        png = Image.open(io.BytesIO((out / ref["url"]).read_bytes()))
        assert png.format == "PNG"
        assert f"Seed: {ref['seed']}" in png.info["parameters"]
    assert article["provenance"]["seeds"] == {"text": 5, "images": [5, 6]}
    assert [str(out / n) for n in ("article.json", "article.md", "article.html")] == (
        result.stdout.splitlines()[:3]
    )


def test_generate_names_a_bad_option(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *articleforge_command(),
            "generate",
            "Solar",
            "--images",
            "1",
            "--size",
            "500x500",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "images.size" in result.stderr and "multiples of 8" in result.stderr
    assert not (tmp_path / "x").exists()

"""Training fixtures: the sample rows, and two short tiny-model runs (LoRA, and nf4 + LoRA)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_DATA = ROOT / "training" / "data" / "articles.jsonl"
FIXTURE_DATA = Path(__file__).parent / "data" / "sample.jsonl"
TINY_CONFIG = ROOT / "training" / "configs" / "tiny.yaml"
STEPS = 30


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The project's article rows when they are there and whole, else this folder's 24 rows."""
    from training.prepare import DataError, load_examples

    if PROJECT_DATA.exists():
        try:
            if len(load_examples(PROJECT_DATA)) >= 20:
                return PROJECT_DATA
        except DataError:
            pass  # still being written: fall back to the fixture
    return FIXTURE_DATA


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny matrices gain nothing from threads, and on a shared 2-core machine two OpenMP
    threads that wait on each other make every step ~20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_tiny(out: Path, data: Path, quantization: str) -> Path:
    """A finished run folder: tiny.yaml for STEPS steps, with or without an nf4 base."""
    from training.train import load_config, main

    config = load_config(
        TINY_CONFIG,
        {
            "data": str(data),
            "quantization": quantization,
            "max_steps": STEPS,
            "validation_fraction": 0.2,
            "output_dir": str(out),
        },
    )
    with one_thread():
        return main(config)


@pytest.fixture(scope="session")
def lora_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_text_path: Path, sample_data: Path
) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs") / "lora", sample_data, "none")


@pytest.fixture(scope="session")
def nf4_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_text_path: Path, sample_data: Path
) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs") / "nf4", sample_data, "nf4")


@pytest.fixture(params=["lora_run", "nf4_run"], ids=["lora", "nf4-lora"])
def trained(request: pytest.FixtureRequest) -> Path:
    """Each of the two runs in turn."""
    return Path(request.getfixturevalue(request.param))

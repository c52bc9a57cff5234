"""bench/qlora_train.py runs on the GPU machine; here it must at least parse its arguments."""

from __future__ import annotations

import subprocess
import sys

from tests.training.conftest import ROOT


def test_the_qlora_benchmark_explains_itself() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "qlora_train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--tiny" in result.stdout and "--variants" in result.stdout

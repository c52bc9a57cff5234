"""`articleforge generate --source`: files and URLs as sources, in one process, offline.

A Markdown file is read and used (its passages reach the sections' prompts, which the saved
article cannot show, so the check is its place in `sources` and the references machinery's
inputs); an unreachable URL is reported with its reason and the article goes on; when no source
can be used the command stops with one sentence and exit status 1.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.processes import articleforge_command

pytestmark = pytest.mark.e2e

NOTES = (
    "# Heat pump notes\n\nA heat pump moves heat instead of making it. An air source heat pump "
    "gives about three units of heat for each unit of electricity in mild weather.\n"
)


def _generate(cache_dir: Path, out: Path, *sources: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARTICLEFORGE_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    args = [a for s in sources for a in ("--source", s)]
    return subprocess.run(
        [
            *articleforge_command(),
            "generate",
            "Heat pumps for homeowners",
            "--images",
            "0",
            "--sections",
            "2",
            "--words",
            "120",
            "--out",
            str(out),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_file_source_is_used_and_a_dead_url_is_reported(cache_dir: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    done = _generate(cache_dir, tmp_path / "out", str(notes), "http://127.0.0.1:9/gone")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    said = " ".join(done.stderr.split())  # the console's lines, wherever it wrapped them
    assert "Source src_2 (http://127.0.0.1:9/gone) could not be fetched" in said
    article = json.loads((tmp_path / "out" / "article.json").read_text())
    first, second = article["sources"]
    assert first["id"] == "src_1" and first["filename"] == "notes.md" and first["error"] is None
    assert first["media_type"] == "text/markdown" and first["chars"] > 100
    assert second["error"]["type"] == "fetch_failed"
    assert "text" not in first  # the article keeps the metadata; the text stays out of it
    assert article["provenance"]["timings"]["sources"] >= 0


def test_no_usable_source_stops_with_one_sentence(cache_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    done = _generate(cache_dir, tmp_path / "out", str(empty))
    assert done.returncode == 1
    assert "none of the 1 sources could be used" in " ".join(done.stderr.split())
    assert not (tmp_path / "out" / "article.json").exists()
    missing = _generate(cache_dir, tmp_path / "out", str(tmp_path / "nope.pdf"))
    assert missing.returncode == 2
    assert "is neither an http(s) URL nor a file" in " ".join(missing.stderr.split())

"""README.md as a new user follows it (issue 27): the install at the top says where the CPU
build of torch comes from and that Redis must be installed, and the settings table lists the
ports that `articleforge up` binds."""

from __future__ import annotations

import re
from pathlib import Path

from services.gateway.config import GatewaySettings
from services.image.config import ImageSettings
from services.text.config import TextSettings

README = (Path(__file__).parents[1] / "README.md").read_text()
# What comes before the first section: the install and the first run.
TOP = README.split("\n## ", 1)[0]


def test_the_first_two_commands_stay_as_ci_runs_them() -> None:
    first = re.search(r"```bash\n(.*?)```", README, re.DOTALL)
    assert first is not None
    assert first.group(1).splitlines() == [
        "pip install torch==2.13.0 && pip install -e '.[all,dev]'",
        'articleforge generate "The future of solar power" --images 2',
    ]


def test_the_top_says_where_the_cpu_build_of_torch_comes_from() -> None:
    assert (
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
        "&& pip install -e '.[all,dev]'" in TOP
    )


def test_the_top_says_how_to_install_redis() -> None:
    assert "sudo apt-get install redis-server" in TOP  # Debian/Ubuntu
    assert "brew install redis && brew services start redis" in TOP  # macOS


def test_the_settings_table_lists_the_ports_that_up_binds() -> None:
    rows = [line for line in README.splitlines() if line.startswith("| `ARTICLEFORGE_")]
    for settings, option in (
        (GatewaySettings, "--gateway-port"),
        (TextSettings, "--text-port"),
        (ImageSettings, "--image-port"),
    ):
        (field,) = [f for f in settings.model_fields if f.endswith("_port")]
        name = f"`ARTICLEFORGE_{field.upper()}`"
        (row,) = [r for r in rows if name in r.split(" | ")[0]]
        assert f"`{option}`" in row, row
        assert f"`{settings.model_fields[field].default}`" in row.split(" | ")[-1], row

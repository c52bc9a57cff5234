"""Gateway settings: env parsing, the generated webhook secret, and refused combinations."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.gateway.config import GatewaySettings


def test_retry_intervals_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTICLEFORGE_WEBHOOK_RETRY_INTERVALS", "5, 30,120")
    assert GatewaySettings(_env_file=None).webhook_retry_intervals == [5, 30, 120]  # type: ignore[call-arg]
    monkeypatch.setenv("ARTICLEFORGE_WEBHOOK_RETRY_INTERVALS", "[1, 2]")
    assert GatewaySettings(_env_file=None).webhook_retry_intervals == [1, 2]  # type: ignore[call-arg]


def test_the_webhook_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = GatewaySettings(data_dir=tmp_path, _env_file=None).resolved_webhook_secret()  # type: ignore[call-arg]
    again = GatewaySettings(data_dir=tmp_path, _env_file=None).resolved_webhook_secret()  # type: ignore[call-arg]
    assert first == again and first.startswith("whsec_")
    mode = (tmp_path / "webhook_secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600  # readable by the service user only


def test_a_secret_without_the_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="must start with `whsec_`"):
        GatewaySettings(webhook_secret="hunter2", _env_file=None)  # type: ignore[call-arg]


def test_source_networks_are_cidrs_and_a_bad_one_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARTICLEFORGE_SOURCES_ALLOW_NETWORKS", " 10.20.0.0/16, 127.0.0.1/32 ,")
    assert GatewaySettings(_env_file=None).source_networks == ["10.20.0.0/16", "127.0.0.1/32"]
    monkeypatch.setenv("ARTICLEFORGE_SOURCES_ALLOW_NETWORKS", "10.0.0.0/8,intranet")
    with pytest.raises(ValueError, match="'intranet' is not a network") as refused:
        GatewaySettings(_env_file=None)
    assert "sources_allow_networks" in str(refused.value)

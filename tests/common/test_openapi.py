"""The design's promise: every field in every service's OpenAPI has a description and an
example (a nested object or a list of them is documented by its own schema)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI


def _apps() -> dict[str, FastAPI]:
    from services.gateway.app import create_app as gateway
    from services.gateway.config import GatewaySettings
    from services.image.app import create_app as image
    from services.image.config import ImageSettings
    from services.text.app import create_app as text
    from services.text.config import TextSettings

    return {
        "text": text(TextSettings(_env_file=None)),  # type: ignore[call-arg]
        "image": image(ImageSettings(_env_file=None)),  # type: ignore[call-arg]
        "gateway": gateway(GatewaySettings(_env_file=None)),  # type: ignore[call-arg]
    }


def _nested(spec: dict[str, Any]) -> bool:
    """A reference to another schema, a list of them, or an optional one."""
    if "$ref" in spec:
        return True
    if spec.get("type") == "array" and "$ref" in spec.get("items", {}):
        return True
    return any("$ref" in option for option in spec.get("anyOf", []))


@pytest.mark.parametrize("service", ["text", "image", "gateway"])
def test_every_field_has_a_description_and_an_example(service: str) -> None:
    schemas = _apps()[service].openapi()["components"]["schemas"]
    missing = []
    for name, schema in schemas.items():
        if name in ("HTTPValidationError", "ValidationError"):  # FastAPI's own, never sent
            continue
        for field, spec in schema.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{name}.{field}: description")
            if not _nested(spec) and "examples" not in spec and "example" not in spec:
                missing.append(f"{name}.{field}: example")
    assert not missing, missing

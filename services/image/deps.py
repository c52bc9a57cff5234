"""Typed dependencies that hand the loaded engine to routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.common.lifecycle import running_engine
from services.image.engine import ImageEngine


def get_engine(request: Request) -> ImageEngine:
    engine: ImageEngine = running_engine(request, "image")
    return engine


EngineDep = Annotated[ImageEngine, Depends(get_engine)]

"""Typed dependencies that hand the loaded engine to routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.common.errors import NotReady
from services.image.engine import ImageEngine


def get_engine(request: Request) -> ImageEngine:
    engine: ImageEngine | None = request.app.state.engine
    if engine is None:
        reason = request.app.state.load_error or "the image model is still loading"
        raise NotReady(reason, headers={"Retry-After": "5"})
    return engine


EngineDep = Annotated[ImageEngine, Depends(get_engine)]

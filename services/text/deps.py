"""Typed dependencies that hand the loaded engine to routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.common.errors import NotReady
from services.text.engine import TextEngine


def get_engine(request: Request) -> TextEngine:
    engine: TextEngine | None = request.app.state.engine
    if engine is None:
        reason = request.app.state.load_error or "the text model is still loading"
        raise NotReady(reason, headers={"Retry-After": "5"})
    return engine


EngineDep = Annotated[TextEngine, Depends(get_engine)]

"""Typed dependencies that hand the loaded engine to routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.common.lifecycle import running_engine
from services.text.engine import TextEngine


def get_engine(request: Request) -> TextEngine:
    engine: TextEngine = running_engine(request, "text")
    return engine


EngineDep = Annotated[TextEngine, Depends(get_engine)]

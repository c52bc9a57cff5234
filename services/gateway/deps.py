"""Typed dependencies: settings and the article store, from app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.gateway.config import GatewaySettings
from services.gateway.store import ArticleStore


def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


def get_store(request: Request) -> ArticleStore:
    store: ArticleStore = request.app.state.store
    return store


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
StoreDep = Annotated[ArticleStore, Depends(get_store)]

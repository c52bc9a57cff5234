"""The gateway's OpenAPI document lists, on each route, the error replies that route can give.

Routers share one table of error replies (``routes.RESPONSES``), so that every route documents
the error shape. Not every route can give every one of them, and a client generator reads the
list as a promise. ``document_errors`` keeps, on each `/v1` route, what it can really give:

- 401 where a key is needed (every `/v1` route; the images route accepts a signed URL instead);
- 404 where the path names something (an article, an image, a section);
- 409 where the route says so itself, or takes an `Idempotency-Key` (a reuse with another body);
- 413 where a body is accepted (POST, PUT, PATCH), since the size limit is checked first;
- 429 where a rate limit or a queue bound applies (the route depends on ``rate_limited``), or
  the route says so itself.

The Bearer scheme itself is declared by ``auth.BEARER`` (``components.securitySchemes``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

from services.gateway.auth import authenticate, rate_limited

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _calls(dependant: Dependant) -> set[Callable[..., Any]]:
    found: set[Callable[..., Any]] = set()
    for sub in dependant.dependencies:
        if sub.call is not None:
            found.add(sub.call)
        found |= _calls(sub)
    return found


def _headers(dependant: Dependant) -> set[str]:
    names = {param.alias.lower() for param in dependant.header_params}
    for sub in dependant.dependencies:
        names |= _headers(sub)
    return names


def document_errors(router: APIRouter, shared: dict[int | str, dict[str, Any]]) -> None:
    """Drops from each route the shared error replies (``shared``) it cannot give; a reply the
    route declares itself (another description) is kept."""
    for route in router.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/v1/"):
            continue
        calls, headers = _calls(route.dependant), _headers(route.dependant)
        can_give = {
            401: True,
            404: "{" in route.path,
            409: "idempotency-key" in headers,
            413: bool((route.methods or set()) & BODY_METHODS),
            429: rate_limited in calls,
        }
        if authenticate not in calls and not route.path.startswith("/v1/images/"):
            can_give[401] = False
        for code, possible in can_give.items():
            inherited = route.responses.get(code) == shared.get(code)  # not its own
            if inherited and not possible:
                del route.responses[code]


def add_schemas(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Puts ``models`` into `components.schemas`: bodies that a route reads itself (the batch
    route takes JSON or CSV) are documented through ``openapi_extra`` `$ref`s to them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in schema.pop("$defs", {}).items():
                schemas.setdefault(name, definition)
            schemas[model.__name__] = schema
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]

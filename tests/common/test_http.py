"""The shared HTTP layer: request ids, the one error shape, health routes."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from services.common.errors import InvalidRequest, Overloaded
from services.common.http import install_common


class Body(BaseModel):
    steps: int = Field(ge=1, le=150)


def make_app(ready: bool = True) -> FastAPI:
    app = FastAPI()
    install_common(app, is_ready=lambda app: None if ready else "still loading")

    @app.post("/echo")
    async def echo(body: Body) -> dict[str, int]:
        return {"steps": body.steps}

    @app.get("/busy")
    async def busy() -> None:
        raise Overloaded("queue full", retry_after=3)

    @app.get("/bad")
    async def bad() -> None:
        raise InvalidRequest("prompt is too long; the limit is 10 tokens", param="prompt")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return app


def test_request_id_is_generated_or_echoed() -> None:
    client = TestClient(make_app())
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    assert (
        client.get("/healthz", headers={"X-Request-Id": "cms-42"}).headers["x-request-id"]
        == "cms-42"
    )
    # A header that could smuggle text into logs is replaced, not echoed.
    assert (
        client.get("/healthz", headers={"X-Request-Id": "a b\tc"}).headers["x-request-id"]
        != "a b\tc"
    )


def test_validation_error_names_field_and_limit() -> None:
    response = TestClient(make_app()).post("/echo", json={"steps": 400})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error == {
        "type": "invalid_request_error",
        "message": "steps: Input should be less than or equal to 150; got 400",
        "param": "steps",
        "request_id": response.headers["x-request-id"],
    }


def test_domain_errors_and_unknown_routes_share_the_shape() -> None:
    client = TestClient(make_app(), raise_server_exceptions=False)
    busy = client.get("/busy")
    assert busy.status_code == 429 and busy.headers["retry-after"] == "3"
    assert busy.json()["error"]["type"] == "rate_limit_error"
    bad = client.get("/bad")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    boom = client.get("/boom")
    assert boom.status_code == 500
    assert boom.json()["error"]["message"] == "internal server error"  # no internals leak
    assert boom.headers["x-request-id"] == boom.json()["error"]["request_id"]


def test_readyz_and_metrics() -> None:
    assert TestClient(make_app(ready=True)).get("/readyz").json() == {"status": "ready"}
    loading = TestClient(make_app(ready=False)).get("/readyz")
    assert loading.status_code == 503
    assert loading.json()["error"]["message"] == "still loading"
    metrics = TestClient(make_app()).get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")

"""Errors leave the API in one shape; a failing embedding service is a 503, not an internal error."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.errors import install_error_handlers
from core.protocols import EmbedderUnavailable


def test_an_unavailable_embedding_server_is_a_503_in_the_error_shape() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/search")
    def search() -> None:
        raise EmbedderUnavailable("embedding server unavailable: Connection refused")

    response = TestClient(app, raise_server_exceptions=False).get("/search")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "Connection refused" in error["message"]

"""One error hierarchy, one JSON shape: {"error": {"code", "message", "request_id"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.protocols import EmbedderUnavailable

log = logging.getLogger(__name__)


class KBError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(KBError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(KBError):
    """No key, or one that is malformed, unknown, expired or revoked: the same answer for each."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "a valid API key is required (Authorization: Bearer KEY)") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(KBError):
    status_code = 403
    code = "forbidden"


class PayloadTooLarge(KBError):
    status_code = 413
    code = "payload_too_large"


class RateLimited(KBError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})
        self.retry_after_s = max(1, retry_after_s)


class Overloaded(KBError):
    """Too many answers in flight in this process: come back shortly rather than queue without bound."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class NotFound(KBError):
    status_code = 404
    code = "not_found"


class ServiceUnavailable(KBError):
    status_code = 503
    code = "service_unavailable"


def error_body(code: str, message: str, request_id: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


class ErrorInfo(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    """The body of every error response (documented in OpenAPI; built by `error_body`)."""

    error: ErrorInfo


# Declared on the whole app, so that every route documents the shape its errors really have (FastAPI's
# default 422 schema, {"detail": [...]}, is not what kb sends) and clients can generate code for it.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request",
        401: "Missing, unknown, expired or revoked API key",
        403: "The key's role or grants do not allow this",
        404: "Not found",
        413: "Request body too large",
        422: "The request does not match the schema",
        429: "Rate limit reached; see Retry-After",
        503: "Overloaded or a dependency is unavailable; see Retry-After",
    }.items()
}


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KBError)
    async def _kb_error(request: Request, exc: KBError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, _request_id(request)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg', '')}" for e in exc.errors()
        )
        return JSONResponse(error_body("invalid_request", details, _request_id(request)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # Starlette puts the `Allow` header of a 405 on the exception; it must reach the client.
        return JSONResponse(
            error_body(code, str(exc.detail), _request_id(request)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(EmbedderUnavailable)
    async def _embedder_down(request: Request, exc: EmbedderUnavailable) -> JSONResponse:
        # A separate embedding service is down or slow: the caller may retry later, kb itself is fine.
        return JSONResponse(error_body("service_unavailable", str(exc), _request_id(request)), status_code=503)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_body("internal_error", "internal error; see the server log", _request_id(request)), status_code=500
        )

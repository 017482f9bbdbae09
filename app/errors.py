"""One error hierarchy, one JSON shape: {"error": {"code", "message", "request_id"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

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


class ClientClosedRequest(KBError):
    """The client went away before its answer was ready; nobody reads this response (nginx's 499)."""

    status_code = 499
    code = "client_closed_request"


class NotFound(KBError):
    status_code = 404
    code = "not_found"


class Conflict(KBError):
    """The request clashes with what exists (a key or knowledge base of that name), or with its state."""

    status_code = 409
    code = "conflict"


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
        409: "Conflicts with what exists (a name taken) or with its state",
        413: "Request body too large",
        422: "The request does not match the schema",
        429: "Rate limit reached; see Retry-After",
        503: "Overloaded or a dependency is unavailable; see Retry-After",
    }.items()
}


OPENAI_PREFIX = "/v1/"

# The `type` OpenAI's clients read to pick their exception class (they also go by the status code).
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """The body of an error under /v1/: OpenAI's shape, which its clients parse."""

    error: OpenAIErrorInfo


# Declared on the /v1 router: it replaces the app-wide kb shape for those routes in OpenAPI.
OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": OpenAIErrorResponse, "description": spec["description"]}
    for status, spec in ERROR_RESPONSES.items()
}


def openai_error_body(status_code: int, code: str, message: str) -> dict[str, dict[str, str | None]]:
    kind = _OPENAI_TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def speaks_openai(path: str) -> bool:
    """The OpenAI-compatible endpoints answer errors in OpenAI's shape, so that its clients raise the right
    exception with the message; every other path keeps kb's one shape."""
    return path.startswith(OPENAI_PREFIX)


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def json_error(
    request: Request, status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error response in the shape the request's path speaks."""
    if speaks_openai(request.url.path):
        if status_code == 422:
            # OpenAI answers a request it cannot accept with 400 (its clients raise BadRequestError).
            status_code = 400
        body: Mapping[str, object] = openai_error_body(status_code, code, message)
    else:
        body = error_body(code, message, _request_id(request))
    return JSONResponse(body, status_code=status_code, headers=headers)


def error_response(request: Request, exc: KBError) -> JSONResponse:
    """The response for a kb error, wherever it is raised (handlers and middleware alike)."""
    return json_error(request, exc.status_code, exc.code, exc.message, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KBError)
    async def _kb_error(request: Request, exc: KBError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(_validation_message(e) for e in exc.errors())
        return json_error(request, 422, "invalid_request", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        message = str(exc.detail)
        if isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's "error parsing the body" for JSON that is not UTF-8 says too little to fix it.
            message = f"the request body is not valid UTF-8 ({exc.__cause__.reason} at byte {exc.__cause__.start})"
        # Starlette puts the `Allow` header of a 405 on the exception; it must reach the client.
        return json_error(request, exc.status_code, code, message, exc.headers)

    @app.exception_handler(EmbedderUnavailable)
    async def _embedder_down(request: Request, exc: EmbedderUnavailable) -> JSONResponse:
        # A separate embedding service is down or slow: the caller may retry later, kb itself is fine.
        return json_error(request, 503, "service_unavailable", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # This handler runs outside every middleware, so it sets the request id header itself.
        rid = _request_id(request)
        # The trace id, when tracing is on, comes the same way (app/ops/tracing.py's TraceIds puts it there).
        trace_id = str(getattr(request.state, "trace_id", ""))
        extra = {"request_id": rid, "method": request.method, "path": request.url.path}
        log.exception("unhandled error", extra=extra | ({"trace_id": trace_id} if trace_id else {}))
        headers = ({"x-request-id": rid} if rid else {}) | ({"x-trace-id": trace_id} if trace_id else {})
        return json_error(request, 500, "internal_error", "internal error; see the server log", headers or None)


def _validation_message(error: Mapping[str, Any]) -> str:
    loc = error.get("loc", ())
    if error.get("type") == "json_invalid":
        position = loc[-1] if loc else "?"
        return f"the request body is not valid JSON: {error.get('ctx', {}).get('error', '')} at character {position}"
    path = ".".join(str(p) for p in loc if p != "body") or "body"
    return f"{path}: {error.get('msg', '')}"

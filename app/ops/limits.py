"""Request limits: body size, question and history size, answers in flight, and work for clients that left."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Mapping, Sequence
from contextlib import suppress
from types import TracebackType
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ClientClosedRequest, Overloaded, PayloadTooLarge, error_body
from app.settings import RequestLimitSettings
from core.types import ChatMessage

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuses request bodies over a size with 413, before anything parses them.

    Pure ASGI (not BaseHTTPMiddleware), so that responses, Server-Sent Events included, pass through
    untouched. A declared Content-Length over the limit is refused without reading; a body without one
    (chunked) is counted as it arrives. Paths under a prefix in `limits` get that limit instead (the
    longest prefix wins): the UI's upload route takes files, the JSON API does not. A prefix may name a
    method ("POST /documents"): uploads are large, a JSON change of the same document is not.

    Starlette's RequestBodyLimitMiddleware does the counting too, but answers some cases (a declared
    length on a route that never reads the body) with plain text outside kb's error shape.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._prefixes = sorted((limits or {}).items(), key=lambda kv: len(kv[0]), reverse=True)

    def limit_for(self, path: str, method: str = "GET") -> int:
        for key, limit in self._prefixes:
            wanted, _, prefix = key.rpartition(" ")
            if wanted and wanted != method:
                continue
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"], scope.get("method", "GET"))
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(scope, send, limit)
            return

        received = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Whatever the app makes of the interrupted body (FastAPI: a 400) is replaced by the 413.
            if too_large:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await _too_large(scope, send, limit)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    error = PayloadTooLarge(f"the request body is larger than {limit} bytes")
    request_id = str(scope.get("state", {}).get("request_id", ""))
    body = json.dumps(error_body(error.code, error.message, request_id)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            # The client may still be sending; tell it the connection will not read the rest.
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def check_question(
    question: str, history: Sequence[ChatMessage], limits: RequestLimitSettings, *, field: str = "question"
) -> None:
    """422 when a question with its history is over the configured sizes (runtime settings, so they are
    checked here rather than declared on the schema)."""
    errors: list[dict[str, Any]] = []

    def fail(loc: tuple[str | int, ...], msg: str) -> None:
        errors.append({"type": "too_long", "loc": ("body", *loc), "msg": msg, "input": None})

    if len(history) > limits.max_history_messages:
        fail(("history",), f"at most {limits.max_history_messages} messages are allowed (got {len(history)})")
    for i, message in enumerate(history):
        if len(message.content) > limits.max_message_chars:
            fail(("history", i, "content"), f"at most {limits.max_message_chars} characters per message")
    total = len(question) + sum(len(m.content) for m in history)
    if len(question) > limits.max_question_chars:
        fail((field,), f"at most {limits.max_question_chars} characters are allowed (got {len(question)})")
    elif total > limits.max_question_chars:
        fail(
            ("history",),
            f"the question and its history together may have at most {limits.max_question_chars} characters "
            f"(got {total})",
        )
    if errors:
        raise RequestValidationError(errors)


class AnswerSlots:
    """A cap on answers being produced at once in this process. Beyond it a caller is told to come back
    (503 with Retry-After) at once: a queue would only hold connections while the model falls behind."""

    def __init__(self, capacity: int, *, retry_after_s: int = 2) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    def take(self) -> AnswerSlot:
        # Only the event loop calls this, so the check and the increment cannot interleave.
        if self.in_flight >= self.capacity:
            raise Overloaded(
                f"{self.capacity} answers are already being produced; try again shortly",
                retry_after_s=self.retry_after_s,
            )
        self.in_flight += 1
        return AnswerSlot(self)


class AnswerSlot:
    def __init__(self, slots: AnswerSlots) -> None:
        self._slots: AnswerSlots | None = slots

    def release(self) -> None:
        # Idempotent: a stream releases its slot when it ends and again, as a safety net, after the response.
        if self._slots is not None:
            self._slots.in_flight -= 1
            self._slots = None

    def __enter__(self) -> AnswerSlot:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


def answer_slots(request: Request) -> AnswerSlots:
    slots: AnswerSlots = request.app.state.answer_slots
    return slots


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, _T]) -> _T:
    """Run `work`, cancelling it if the client goes away first: an answer nobody waits for should not
    keep the model busy (cancelling the task closes its request to the model server)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        log.info("client went away; cancelling its answer")
        raise ClientClosedRequest("the client closed the connection")
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
                with suppress(asyncio.CancelledError):
                    await pending


async def _disconnect(request: Request) -> None:
    # The body has been read, so the next message is the disconnect. Waiting for it, rather than polling
    # request.is_disconnected(), also works through BaseHTTPMiddleware, which drops the message that
    # is_disconnected's instantly cancelled receive would have seen.
    while (await request.receive())["type"] != "http.disconnect":
        pass

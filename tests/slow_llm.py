"""A small OpenAI-compatible chat server for the request-limit tests: it takes `delay_s` to answer, reports
real `usage`, and notices when a client hangs up before the answer (the request was cancelled).

Not a model: it always answers the same sentence. It speaks the protocol the OpenAIGenerator speaks
(JSON and Server-Sent Events), over a real socket, so that kb's real client code runs against it.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.procs import free_port

ANSWER = "Passwords must have at least 14 characters [1]."


@dataclass
class Usage:
    prompt_tokens: int = 40
    completion_tokens: int = 8


@dataclass
class SlowLLM:
    url: str
    delay_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
    started: int = 0
    completed: int = 0
    cancelled: int = 0
    cancelled_event: threading.Event = field(default_factory=threading.Event)
    started_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, *, delay_s: float = 0.0) -> None:
        with self.lock:
            self.delay_s = delay_s
            self.started = self.completed = self.cancelled = 0
            self.cancelled_event.clear()
            self.started_event.clear()


class _Handler(BaseHTTPRequestHandler):
    llm: SlowLLM

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json({"object": "list", "data": [{"id": "kb-llm", "object": "model", "created": 0, "owned_by": "t"}]})
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        with self.llm.lock:
            self.llm.started += 1
            delay = self.llm.delay_s
        self.llm.started_event.set()
        if self._client_left_within(delay):
            with self.llm.lock:
                self.llm.cancelled += 1
            self.llm.cancelled_event.set()
            return
        usage = {
            "prompt_tokens": self.llm.usage.prompt_tokens,
            "completion_tokens": self.llm.usage.completion_tokens,
            "total_tokens": self.llm.usage.prompt_tokens + self.llm.usage.completion_tokens,
        }
        base = {"id": "cmpl-test", "created": 0, "model": "kb-llm"}
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            delta = {"index": 0, "delta": {"role": "assistant", "content": ANSWER}, "finish_reason": None}
            chunk = {**base, "object": "chat.completion.chunk", "choices": [delta]}
            last = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            for event in (chunk, last):
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        else:
            self._json({
                **base, "object": "chat.completion", "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            })  # fmt: skip
        with self.llm.lock:
            self.llm.completed += 1

    def _client_left_within(self, seconds: float) -> bool:
        """Wait `seconds`; True as soon as the client closes its end (it sends nothing else meanwhile)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], left)
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
                time.sleep(0.01)
        return False


@contextmanager
def running_slow_llm() -> Iterator[SlowLLM]:
    port = free_port()
    llm = SlowLLM(url=f"http://127.0.0.1:{port}/v1")
    handler = type("Handler", (_Handler,), {"llm": llm})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="slow-llm", daemon=True)
    thread.start()
    try:
        yield llm
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

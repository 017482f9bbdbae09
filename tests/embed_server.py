"""A small OpenAI-compatible embeddings server for the tests: the bundled all-MiniLM-L6-v2 behind
`POST /v1/embeddings`, run as a real process (`python -m tests.embed_server --port P`).

It behaves like a server that does not normalise: each vector is scaled by a factor that depends on its
text, so a client that forgot to normalise fails the unit-length contract. For the failure tests, an input
containing FAIL_MARKER gets a 500 and one containing SLOW_MARKER is answered after SLOW_S seconds.
`GET /stats` lists the batch sizes of the embedding requests received so far.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

FAIL_MARKER = "\x00fail-500"
SLOW_MARKER = "\x00slow"
SLOW_S = 3.0
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ROOT = Path(__file__).resolve().parent.parent


class EmbeddingRequest(BaseModel):
    # At module level: FastAPI resolves the (postponed) annotation of the endpoint's parameter by name.
    model: str
    input: list[str] | str
    encoding_format: str = "float"


def scale_of(text: str) -> float:
    """Deterministic per text (so vectors do not depend on the batch), never 1."""
    return 1.5 + (len(text) % 7)


def build_app(model_path: str) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    batches: list[int] = []
    app = FastAPI()

    @app.post("/v1/embeddings", response_model=None)
    def embeddings(request: EmbeddingRequest) -> dict[str, Any] | JSONResponse:
        texts = [request.input] if isinstance(request.input, str) else request.input
        batches.append(len(texts))
        if any(FAIL_MARKER in t for t in texts):
            return JSONResponse({"error": {"message": "injected failure", "type": "server_error"}}, status_code=500)
        if any(SLOW_MARKER in t for t in texts):
            time.sleep(SLOW_S)
        vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(x) * scale_of(t) for x in row]}
            for i, (t, row) in enumerate(zip(texts, vectors.tolist(), strict=True))
        ]
        # Reversed on purpose: the OpenAI shape numbers the vectors, and a client must use the numbers.
        data.reverse()
        tokens = sum(len(model.tokenizer.encode(t)) for t in texts)
        return {
            "object": "list",
            "model": request.model,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/stats")
    def stats() -> dict[str, list[int]]:
        return {"batches": batches}

    return app


@dataclass
class EmbedServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def batches(self) -> list[int]:
        import httpx

        response = httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=10)
        response.raise_for_status()
        return list(response.json()["batches"])


@contextmanager
def running_embed_server(log_path: Path, timeout_s: float = 120.0) -> Iterator[EmbedServer]:
    """Start the server on a free 127.0.0.1 port, wait until it answers, stop it by its PID afterwards."""
    from core.procs import free_port
    from tests.servers import stop, wait_until_ready

    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.embed_server", "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = EmbedServer(process, port)
    try:
        url = f"http://127.0.0.1:{port}/stats"
        wait_until_ready(process, url, log_path, timeout_s=timeout_s, what="embed server")
        yield server
    finally:
        stop(process, timeout_s=10)


def main() -> None:
    import uvicorn

    from retrieval.embedder import resolve_model_location

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(resolve_model_location(MODEL)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

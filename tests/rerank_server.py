"""A small rerank server for the tests, speaking both `/rerank` formats (TEI's and the Cohere/Jina one of
vLLM and Infinity), run as a real process (`python -m tests.rerank_server --port P --protocol tei`).

The scorer is lexical (the share of the query's words found in the passage), which is enough to check
the client's wiring: order, indices, scores. A query containing FAIL_MARKER gets a 500.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

FAIL_MARKER = "fail-500"
ROOT = Path(__file__).resolve().parent.parent
_WORD = re.compile(r"\w+")


class TeiRequest(BaseModel):
    query: str
    texts: list[str]
    raw_scores: bool = False
    truncate: bool = False


class CohereRequest(BaseModel):
    query: str
    documents: list[str]
    model: str = ""
    top_n: int | None = None


def score(query: str, text: str) -> float:
    words = {w.lower() for w in _WORD.findall(query)}
    found = {w.lower() for w in _WORD.findall(text)}
    return len(words & found) / max(1, len(words))


def build_app(protocol: str) -> Any:
    from fastapi import FastAPI, HTTPException

    app = FastAPI()
    if protocol == "tei":

        @app.post("/rerank")
        def tei(request: TeiRequest) -> list[dict[str, float]]:
            if FAIL_MARKER in request.query:
                raise HTTPException(500, "injected failure")
            scored = [{"index": i, "score": score(request.query, t)} for i, t in enumerate(request.texts)]
            # Best first, as TEI answers: a client must use the indices, not the order.
            return sorted(scored, key=lambda s: -s["score"])

    else:

        @app.post("/rerank")
        def cohere(request: CohereRequest) -> dict[str, Any]:
            if FAIL_MARKER in request.query:
                raise HTTPException(500, "injected failure")
            # Raw logits, as some servers send: a client must map them to 0-1 itself.
            results = [
                {"index": i, "relevance_score": 8 * score(request.query, d) - 4}
                for i, d in enumerate(request.documents)
            ]
            results.sort(key=lambda r: -r["relevance_score"])
            return {"model": request.model, "results": results[: request.top_n or len(results)]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


@dataclass
class RerankServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def running_rerank_server(protocol: str, log_path: Path, timeout_s: float = 60.0) -> Iterator[RerankServer]:
    """Start the server on a free 127.0.0.1 port, wait until it answers, stop it by its PID afterwards."""
    from core.procs import free_port
    from tests.servers import stop, wait_until_ready

    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.rerank_server", "--port", str(port), "--protocol", protocol],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until_ready(
            process, f"http://127.0.0.1:{port}/health", log_path, timeout_s=timeout_s, what="rerank server"
        )
        yield RerankServer(process, port)
    finally:
        stop(process, timeout_s=10)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protocol", choices=["tei", "cohere"], default="tei")
    args = parser.parse_args()
    uvicorn.run(build_app(args.protocol), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

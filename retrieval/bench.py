"""`kb bench retrieval`: kb's retrieval latency beside the bare calls it makes and the LangChain baseline.

The corpus grows in one collection (5k → 20k → 50k chunks): SciFact abstracts, then variants of them.
Variant k of an abstract has its sentences rotated by k and its vector moved by small Gaussian noise
(then re-normalised), so that the index holds distinct rows with SciFact's vocabulary and vector
distribution without embedding 50k passages on two cores.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.types import Chunk, SearchFilter
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.evaluate import BeirSet, percentile
from retrieval.langchain_baseline import LangChainBaseline
from retrieval.pipeline import QueryPipeline
from retrieval.store import MilvusStore

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class SizeReport:
    chunks: int
    queries: int
    kb_p50_ms: float
    kb_p95_ms: float
    bare_p50_ms: float
    bare_p95_ms: float
    embed_p50_ms: float
    search_p50_ms: float
    langchain_p50_ms: float
    langchain_p95_ms: float
    insert_rows_per_s: float

    @property
    def overhead_p95(self) -> float:
        return self.kb_p95_ms / self.bare_p95_ms if self.bare_p95_ms else 0.0


@dataclass
class BenchReport:
    mode: str
    limit: int
    analyzer: str
    sizes: list[SizeReport] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        for size, row in zip(self.sizes, data["sizes"], strict=True):
            row["overhead_p95"] = size.overhead_p95
        return data

    def table(self) -> str:
        head = (
            "| chunks | kb p50 | kb p95 | bare calls p50 | bare calls p95 | kb p95 / bare p95 "
            "| (embed p50 / search p50) | LangChain p50 | LangChain p95 | insert rows/s |"
        )
        lines = [head, "|" + "---|" * 10]
        for s in self.sizes:
            lines.append(
                f"| {s.chunks:,} | {s.kb_p50_ms:.1f} | {s.kb_p95_ms:.1f} | {s.bare_p50_ms:.1f} | {s.bare_p95_ms:.1f} "
                f"| {s.overhead_p95:.2f}x | {s.embed_p50_ms:.1f} / {s.search_p50_ms:.1f} | {s.langchain_p50_ms:.1f} "
                f"| {s.langchain_p95_ms:.1f} | {s.insert_rows_per_s:.0f} |"
            )
        return "\n".join(lines)


def variant_rows(data: BeirSet, vectors: np.ndarray, total: int, seed: int = 7) -> tuple[list[Chunk], np.ndarray]:
    """The first `total` bench chunks: originals first, then variants (see the module docstring)."""
    rng = np.random.default_rng(seed)
    chunks: list[Chunk] = []
    rows: list[np.ndarray] = []
    n = len(data.corpus)
    for i in range(total):
        copy, j = divmod(i, n)
        doc = data.corpus[j]
        sentences = _SENTENCE.split(doc.text) or [doc.text]
        k = copy % len(sentences)
        text = doc.title + "\n" + " ".join(sentences[k:] + sentences[:k])
        vec = vectors[j]
        if copy:
            vec = vec + rng.normal(0.0, 0.02, size=vec.shape).astype(np.float32)
            vec = vec / np.linalg.norm(vec)
        doc_id = f"{doc.doc_id}~{copy}" if copy else doc.doc_id
        chunks.append(Chunk(chunk_id=Chunk.make_id(doc_id, 1, 0), doc_id=doc_id, text=text, title=doc.title))
        rows.append(vec)
    return chunks, np.asarray(rows, dtype=np.float32)


def bench_retrieval(
    data: BeirSet,
    vectors: np.ndarray,
    *,
    sizes: Sequence[int],
    pipeline: QueryPipeline,
    store: MilvusStore,
    embedder: SentenceTransformerEmbedder,
    work_dir: Path,
    queries: int,
    limit: int,
    analyzer: str,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchReport:
    """Grow both indexes to each size, then time every query three ways, interleaved so that noise from
    other processes on the machine falls on all three alike."""
    report = BenchReport(mode="hybrid", limit=limit, analyzer=analyzer)
    texts = list(data.queries.values())[:queries]
    chunks, rows = variant_rows(data, vectors, max(sizes))
    baseline = LangChainBaseline(embedder, work_dir / "langchain.db")
    done = 0
    try:
        for size in sorted(sizes):
            progress(f"indexing up to {size} chunks")
            t = time.perf_counter()
            for start in range(done, size, 1000):
                end = min(start + 1000, size)
                store.upsert("bench", chunks[start:end], rows[start:end].tolist())
            store.flush("bench")
            rate = (size - done) / (time.perf_counter() - t)
            baseline.add([c.text for c in chunks[done:size]], rows[done:size], [c.doc_id for c in chunks[done:size]])
            done = size
            progress(f"timing {len(texts)} queries at {size} chunks")
            report.sizes.append(
                _time_queries(
                    texts,
                    size=size,
                    rate=rate,
                    pipeline=pipeline,
                    store=store,
                    embedder=embedder,
                    baseline=baseline,
                    limit=limit,
                )
            )
    finally:
        baseline.close()
    return report


def _time_queries(
    texts: Sequence[str], *, size: int, rate: float, pipeline: QueryPipeline, store: MilvusStore,
    embedder: SentenceTransformerEmbedder, baseline: LangChainBaseline, limit: int,
) -> SizeReport:  # fmt: skip
    kb_ms: list[float] = []
    bare_ms: list[float] = []
    embed_ms: list[float] = []
    search_ms: list[float] = []
    lc_ms: list[float] = []
    for q in texts[:5]:  # warm caches and connections
        pipeline.candidates(q, kb="bench", limit=limit, mode="hybrid", rerank=False)
    for q in texts:
        t = time.perf_counter()
        pipeline.candidates(q, kb="bench", limit=limit, mode="hybrid", rerank=False)
        kb_ms.append((time.perf_counter() - t) * 1000)

        t = time.perf_counter()
        vector = embedder.embed([q], "query")[0]
        t_embed = time.perf_counter()
        call = store.prepare_search("bench", q, vector, mode="hybrid", limit=limit, flt=SearchFilter())
        t_call = time.perf_counter()
        call.run(store.client)
        t_end = time.perf_counter()
        embed_ms.append((t_embed - t) * 1000)
        search_ms.append((t_end - t_call) * 1000)
        bare_ms.append(embed_ms[-1] + search_ms[-1])  # the calls alone, without building the request

        t = time.perf_counter()
        baseline.search(q, limit)
        lc_ms.append((time.perf_counter() - t) * 1000)
    return SizeReport(
        chunks=size, queries=len(texts),
        kb_p50_ms=percentile(kb_ms, 50), kb_p95_ms=percentile(kb_ms, 95),
        bare_p50_ms=percentile(bare_ms, 50), bare_p95_ms=percentile(bare_ms, 95),
        embed_p50_ms=percentile(embed_ms, 50), search_p50_ms=percentile(search_ms, 50),
        langchain_p50_ms=percentile(lc_ms, 50), langchain_p95_ms=percentile(lc_ms, 95),
        insert_rows_per_s=rate,
    )  # fmt: skip

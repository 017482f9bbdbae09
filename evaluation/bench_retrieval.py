"""`kb bench retrieval`: kb's retrieval latency beside the bare calls it makes and the LangChain baseline.

The corpus grows in one collection (5k → 20k → 50k chunks): a BEIR set's passages, then variants of them.
Variant k of a passage has its sentences rotated by k and its vector moved by small Gaussian noise (then
re-normalised), so that the index holds distinct rows with the set's vocabulary and vector distribution
without embedding 50k passages on two cores.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from app.settings import Settings
from core.types import Chunk
from evaluation.access import EVERYTHING
from evaluation.bare_calls import BareHybridSearch
from evaluation.datasets import BeirSet
from evaluation.langchain_baseline import LangChainBaseline
from evaluation.metrics import percentile
from evaluation.retrieval_eval import cached_passage_vectors
from evaluation.scratch import scratch_container
from retrieval.embedder import ProfiledEmbedder
from retrieval.pipeline import QueryPipeline
from retrieval.store import MilvusStore

BENCH_KB = "bench"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

Progress = Callable[[str], None]


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
    overhead_p95: float = field(init=False)  # kb p95 / bare p95, the headline number

    def __post_init__(self) -> None:
        self.overhead_p95 = self.kb_p95_ms / self.bare_p95_ms if self.bare_p95_ms else 0.0


@dataclass
class BenchReport:
    dataset: str
    mode: str
    limit: int
    analyzer: str
    sizes: list[SizeReport] = field(default_factory=list)

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


def parse_sizes(text: str) -> list[int]:
    try:
        counts = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"--sizes takes comma-separated integers, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise ValueError("--sizes needs at least one positive count")
    return counts


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
    data: BeirSet, settings: Settings, *, sizes: Sequence[int], queries: int, progress: Progress = lambda _: None
) -> BenchReport:
    """Grow kb's index and the baseline's to each size in a throw-away KB_HOME, then time every query three
    ways, interleaved so that noise from other processes on the machine falls on all three alike."""
    limit = settings.retrieval.candidates
    report = BenchReport(dataset=data.name, mode="hybrid", limit=limit, analyzer=settings.milvus.analyzer)
    texts = list(data.queries.values())[:queries]
    with scratch_container(settings, prefix="kb-bench-") as (container, work_dir):
        embedder, store = container.embedder, container.store
        progress(f"embedding {len(data.corpus)} passages (cached)")
        vectors = cached_passage_vectors(
            embedder, [d.body for d in data.corpus], data.fingerprint, settings.home / "cache"
        )
        chunks, rows = variant_rows(data, vectors, max(sizes))
        bare = BareHybridSearch(container.settings, store.collection(BENCH_KB))
        baseline = LangChainBaseline(embedder, work_dir / "langchain.db")
        done = 0
        try:
            for size in sorted(sizes):
                progress(f"indexing up to {size} chunks")
                new = chunks[done:size]
                rate = _grow(store, new, rows[done:size])
                baseline.add([c.text for c in new], rows[done:size], [c.doc_id for c in new])
                done = size
                progress(f"timing {len(texts)} queries at {size} chunks")
                timer = _Timer(container.query, embedder, bare, baseline, limit)
                report.sizes.append(timer.run(texts, size=size, rate=rate))
        finally:
            baseline.close()
            bare.close()
    return report


def _grow(store: MilvusStore, chunks: Sequence[Chunk], rows: np.ndarray) -> float:
    """Insert and flush (sealed, as a deployment would search it); rows per second."""
    t = time.perf_counter()
    for start in range(0, len(chunks), 1000):
        store.upsert(BENCH_KB, chunks[start : start + 1000], rows[start : start + 1000].tolist())
    store.flush(BENCH_KB)
    return len(chunks) / (time.perf_counter() - t)


@dataclass
class _Timer:
    pipeline: QueryPipeline
    embedder: ProfiledEmbedder
    bare: BareHybridSearch
    baseline: LangChainBaseline
    limit: int

    def run(self, texts: Sequence[str], *, size: int, rate: float) -> SizeReport:
        kb_ms: list[float] = []
        embed_ms: list[float] = []
        search_ms: list[float] = []
        lc_ms: list[float] = []
        for q in texts[:5]:  # warm caches and connections
            self.pipeline.candidates(q, flt=EVERYTHING, kb=BENCH_KB, limit=self.limit, mode="hybrid", rerank=False)
        for q in texts:
            t = time.perf_counter()
            self.pipeline.candidates(q, flt=EVERYTHING, kb=BENCH_KB, limit=self.limit, mode="hybrid", rerank=False)
            kb_ms.append((time.perf_counter() - t) * 1000)

            t = time.perf_counter()
            vector = self.embedder.embed([q], "query")[0]
            embed_ms.append((time.perf_counter() - t) * 1000)
            requests = self.bare.requests(q, vector, self.limit)
            t = time.perf_counter()
            self.bare.search(requests, self.limit)
            search_ms.append((time.perf_counter() - t) * 1000)

            t = time.perf_counter()
            self.baseline.search(q, self.limit)
            lc_ms.append((time.perf_counter() - t) * 1000)
        # The calls alone, each timed alone, without building the request objects.
        bare_ms = [e + s for e, s in zip(embed_ms, search_ms, strict=True)]
        return SizeReport(
            chunks=size, queries=len(texts),
            kb_p50_ms=percentile(kb_ms, 50), kb_p95_ms=percentile(kb_ms, 95),
            bare_p50_ms=percentile(bare_ms, 50), bare_p95_ms=percentile(bare_ms, 95),
            embed_p50_ms=percentile(embed_ms, 50), search_p50_ms=percentile(search_ms, 50),
            langchain_p50_ms=percentile(lc_ms, 50), langchain_p95_ms=percentile(lc_ms, 95),
            insert_rows_per_s=rate,
        )  # fmt: skip

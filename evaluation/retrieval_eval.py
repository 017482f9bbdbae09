"""`kb eval retrieval`: nDCG@10, Recall@10/@100, MRR@10 and latency per search mode on a BEIR set, beside
the plain LangChain baseline. The corpus is indexed through kb's own store in a throw-away KB_HOME."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from app.settings import Settings
from core.types import Chunk, SearchMode
from evaluation.access import EVERYTHING
from evaluation.datasets import BeirDoc, BeirSet
from evaluation.metrics import mrr_at, ndcg_at, percentile, recall_at
from evaluation.scratch import scratch_container
from ingest.pipeline import embedded_text
from retrieval.embedder import ProfiledEmbedder
from retrieval.pipeline import QueryPipeline
from retrieval.store import MilvusStore

EvalMode = Literal["bm25", "dense", "hybrid", "rerank", "langchain"]
RETRIEVAL_MODES: tuple[EvalMode, ...] = get_args(EvalMode)
EVAL_KB = "eval"

Progress = Callable[[str], None]


def parse_modes(text: str) -> list[EvalMode]:
    """Comma-separated mode names; ValueError names the valid ones."""
    wanted = [m.strip() for m in text.split(",") if m.strip()]
    modes = [m for m in RETRIEVAL_MODES if m in wanted]
    if not wanted or len(modes) != len(set(wanted)):
        raise ValueError(f"--modes takes {', '.join(RETRIEVAL_MODES)}; got {text!r}")
    return sorted(modes, key=wanted.index)


@dataclass
class ModeReport:
    mode: str
    ndcg_10: float = 0.0
    recall_10: float = 0.0
    recall_100: float = 0.0
    mrr_10: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    queries: int = 0
    note: str = ""
    skipped: bool = False


@dataclass(frozen=True)
class EvalSettings:
    """The settings that decide the numbers, recorded beside them."""

    embedding_model: str
    analyzer: str
    stop_words: bool
    fusion: str
    dense_weight: float
    rrf_k: int
    search_ef: int
    reranker: str | None
    header_in_vectors: bool
    header_in_bm25: bool

    @classmethod
    def of(cls, settings: Settings, *, reranker_loaded: bool) -> EvalSettings:
        r, m = settings.retrieval, settings.milvus
        return cls(
            embedding_model=settings.embedding.model, analyzer=m.analyzer, stop_words=m.stop_words,
            fusion=r.fusion, dense_weight=r.dense_weight, rrf_k=r.rrf_k, search_ef=m.search_ef,
            reranker=settings.reranker.model if reranker_loaded else None,
            header_in_vectors=settings.ingest.header_in_vectors, header_in_bm25=settings.ingest.header_in_bm25,
        )  # fmt: skip


@dataclass
class RetrievalEval:
    dataset: str
    corpus: int
    queries: int
    settings: EvalSettings
    modes: list[ModeReport] = field(default_factory=list)
    index_s: float = 0.0

    def table(self) -> str:
        head = f"{'mode':<22} {'nDCG@10':>8} {'R@10':>7} {'R@100':>7} {'MRR@10':>7} {'p50 ms':>8} {'p95 ms':>8}"
        lines = [f"{self.dataset}: {self.corpus} docs, {self.queries} queries", head, "-" * len(head)]
        for m in self.modes:
            if m.skipped:
                lines.append(f"{m.mode:<22} skipped: {m.note}")
                continue
            lines.append(
                f"{m.mode:<22} {m.ndcg_10:>8.4f} {m.recall_10:>7.4f} {m.recall_100:>7.4f} {m.mrr_10:>7.4f}"
                f" {m.p50_ms:>8.1f} {m.p95_ms:>8.1f}" + (f"  ({m.note})" if m.note else "")
            )
        return "\n".join(lines)


def score_run(
    mode: str, ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]], ms: Sequence[float]
) -> ModeReport:
    n = len(ranked)
    return ModeReport(
        mode=mode,
        ndcg_10=sum(ndcg_at(r, qrels[q], 10) for q, r in ranked.items()) / n,
        recall_10=sum(recall_at(r, qrels[q], 10) for q, r in ranked.items()) / n,
        recall_100=sum(recall_at(r, qrels[q], 100) for q, r in ranked.items()) / n,
        mrr_10=sum(mrr_at(r, qrels[q], 10) for q, r in ranked.items()) / n,
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        queries=n,
    )


def run_queries(
    queries: dict[str, str], search: Callable[[str], list[str]]
) -> tuple[dict[str, list[str]], list[float]]:
    """Ranked doc ids per query (first occurrence of each doc) and each query's latency in ms."""
    ranked: dict[str, list[str]] = {}
    ms: list[float] = []
    for qid, text in queries.items():
        t = time.perf_counter()
        ids = search(text)
        ms.append((time.perf_counter() - t) * 1000)
        ranked[qid] = list(dict.fromkeys(ids))
    return ranked, ms


def cached_passage_vectors(
    embedder: ProfiledEmbedder, texts: Sequence[str], fingerprint: str, cache_dir: Path
) -> np.ndarray:
    """Passage embeddings, cached on disk per model and corpus: embedding is the slow part of an eval."""
    key = hashlib.sha256(
        f"{embedder.model_name}\x00{embedder.profile.name}\x00{embedder.max_seq_length}\x00{fingerprint}".encode()
    ).hexdigest()[:20]
    path = cache_dir / f"emb-{key}.npy"
    if path.is_file():
        vectors: np.ndarray = np.load(path)
        if vectors.shape == (len(texts), embedder.dimension):
            return vectors
    vectors = np.asarray(embedder.embed(list(texts), "passage"), dtype=np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


def corpus_chunks(kb: str, docs: Sequence[BeirDoc]) -> list[Chunk]:
    """One chunk per document: its text, with its title where ingestion keeps a document's title (in
    `Chunk.title`), so that the contextual-header settings decide whether the title is matched."""
    return [
        Chunk(chunk_id=Chunk.make_id(d.doc_id, 1, 0), doc_id=d.doc_id, kb=kb, text=d.text or d.title, title=d.title)
        for d in docs
    ]


def index_corpus(
    store: MilvusStore, kb: str, chunks: Sequence[Chunk], vectors: np.ndarray, *, batch: int = 1000
) -> None:
    for start in range(0, len(chunks), batch):
        part = chunks[start : start + batch]
        store.upsert(kb, part, vectors[start : start + len(part)].tolist())
    store.flush(kb)


def evaluate_retrieval(
    data: BeirSet, settings: Settings, modes: Sequence[EvalMode], progress: Progress = lambda _: None
) -> RetrievalEval:
    """Index the corpus into a throw-away kb (and the LangChain baseline), then run every mode's queries.
    Passage vectors are cached under the user's `$KB_HOME/cache`, the only thing kept."""
    cache_dir = settings.home / "cache"
    with scratch_container(settings) as (container, work_dir):
        embedder, pipeline = container.embedder, container.query
        report = RetrievalEval(
            dataset=data.name, corpus=len(data.corpus), queries=len(data.queries),
            settings=EvalSettings.of(settings, reranker_loaded=pipeline.has_reranker),
        )  # fmt: skip
        progress(f"embedding {len(data.corpus)} passages (cached under {cache_dir})")
        chunks = corpus_chunks(EVAL_KB, data.corpus)
        header = settings.ingest.header_in_vectors
        texts = [embedded_text(c, header=header) for c in chunks]
        fingerprint = f"{data.fingerprint}:{'header' if header else 'text'}"
        vectors = cached_passage_vectors(embedder, texts, fingerprint, cache_dir)
        t = time.perf_counter()
        progress("indexing into Milvus")
        index_corpus(container.store, EVAL_KB, chunks, vectors)
        report.index_s = time.perf_counter() - t
        for mode in modes:
            progress(f"mode {mode}")
            if mode == "langchain":
                result = _langchain_run(data, embedder, vectors, work_dir)
            elif mode == "rerank" and not pipeline.has_reranker:
                result = ModeReport(mode=mode, skipped=True, note="no reranker model could be loaded (see logs)")
            else:
                result = _pipeline_run(data, pipeline, mode)
            report.modes.append(result)
    return report


def _langchain_run(data: BeirSet, embedder: ProfiledEmbedder, vectors: np.ndarray, work_dir: Path) -> ModeReport:
    # Imported here: langchain-milvus is only needed by this mode.
    from evaluation.langchain_baseline import LangChainBaseline

    baseline = LangChainBaseline(embedder, work_dir / "langchain.db")
    try:
        baseline.add([d.body for d in data.corpus], vectors, [d.doc_id for d in data.corpus])
        ranked, ms = run_queries(data.queries, lambda q: baseline.search(q, 100))
    finally:
        baseline.close()
    result = score_run("langchain (baseline)", ranked, data.qrels, ms)
    result.note = "langchain-milvus, dense only, default index"
    return result


# The search each of kb's own modes runs; "rerank" reranks the hybrid candidates.
_SEARCHED_AS: dict[EvalMode, SearchMode] = {"bm25": "bm25", "dense": "dense", "hybrid": "hybrid", "rerank": "hybrid"}


def _pipeline_run(data: BeirSet, pipeline: QueryPipeline, mode: EvalMode) -> ModeReport:
    search_mode = _SEARCHED_AS[mode]
    rerank = mode == "rerank"
    answered: set[str] = set()

    def search(query: str) -> list[str]:
        found = pipeline.candidates(query, flt=EVERYTHING, kb=EVAL_KB, limit=100, mode=search_mode, rerank=rerank)
        answered.add(found.mode)  # language-aware fusion may answer with another mode
        return [h.chunk.doc_id for h in found.hits]

    ranked, ms = run_queries(data.queries, search)
    result = score_run(mode, ranked, data.qrels, ms)
    if answered != {search_mode}:
        result.note = f"answered as {'/'.join(sorted(answered))} (language-aware fusion)"
    return result

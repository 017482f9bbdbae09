"""Retrieval and QA evaluation: data sets, metrics, and the runs that `kb eval` reports.

Metrics follow BEIR/TREC conventions (binary or graded qrels, nDCG with log2 discount, recall over the
relevant set, MRR of the first relevant hit) and SQuAD for answers (EM/F1 after normalisation;
characters for Chinese).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.text import detect_language
from core.types import Chunk, SearchMode
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.pipeline import QueryPipeline
from retrieval.store import MilvusStore

# -- data sets --------------------------------------------------------------------------------------


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class BeirDoc:
    doc_id: str
    title: str
    text: str

    @property
    def body(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass
class BeirSet:
    corpus: list[BeirDoc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    fingerprint: str


def _read_jsonl(path: Path) -> Iterable[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{n}: not JSON: {exc}") from exc


def load_beir(folder: Path) -> BeirSet:
    """corpus.jsonl, queries.jsonl and qrels.tsv (BEIR layout); queries without qrels are dropped."""
    paths = {name: folder / name for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv")}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        raise DatasetError(f"{folder} is not a BEIR data set: missing {', '.join(missing)}")
    digest = hashlib.sha256()
    corpus = []
    for row in _read_jsonl(paths["corpus.jsonl"]):
        doc = BeirDoc(str(row["_id"]), str(row.get("title") or ""), str(row.get("text") or ""))
        digest.update(f"{doc.doc_id}\x00{doc.body}\x00".encode())
        corpus.append(doc)
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(paths["qrels.tsv"].read_text(encoding="utf-8").splitlines()):
        cols = line.split("\t")
        if n == 0 and not cols[-1].strip().lstrip("-").isdigit():
            continue  # header
        if len(cols) < 3:
            raise DatasetError(f"qrels.tsv line {n + 1}: expected query-id, corpus-id, score")
        if int(cols[2]) > 0:
            qrels.setdefault(cols[0], {})[cols[1]] = int(cols[2])
    queries = {str(r["_id"]): str(r["text"]) for r in _read_jsonl(paths["queries.jsonl"]) if str(r["_id"]) in qrels}
    if not corpus or not queries:
        raise DatasetError(f"{folder}: empty corpus or no queries with relevance judgements")
    return BeirSet(corpus=corpus, queries=queries, qrels=qrels, fingerprint=digest.hexdigest()[:16])


@dataclass(frozen=True)
class QAItem:
    qid: str
    question: str
    answers: list[str]
    doc: str
    answerable: bool


def load_qa(folder: Path) -> tuple[Path, list[QAItem]]:
    docs, qa = folder / "docs", folder / "qa.jsonl"
    if not docs.is_dir() or not qa.is_file():
        raise DatasetError(f"{folder} is not a QA data set: it needs docs/ and qa.jsonl")
    items = [
        QAItem(
            qid=str(r["id"]),
            question=str(r["question"]),
            answers=[str(a) for a in r.get("answers") or []],  # type: ignore[attr-defined]
            doc=str(r.get("doc") or ""),
            answerable=bool(r.get("answerable", True)),
        )
        for r in _read_jsonl(qa)
    ]
    if not items:
        raise DatasetError(f"{qa} holds no questions")
    return docs, items


# -- metrics ----------------------------------------------------------------------------------------


def ndcg_at(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    return len(set(ranked[:k]) & set(relevant)) / len(relevant) if relevant else 0.0


def mrr_at(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(ranked[:k]) if d in relevant), 0.0)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else 0.0


def _normalize_answer(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(c for c in text if c not in string.punctuation and not unicodedata.category(c).startswith("P"))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _answer_tokens(text: str) -> list[str]:
    norm = _normalize_answer(text)
    # Chinese has no spaces: SQuAD-style scoring for it compares characters.
    if detect_language(text) == "zh":
        return [c for c in norm if not c.isspace()]
    return norm.split()


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return max((float(_normalize_answer(prediction) == _normalize_answer(a)) for a in answers), default=0.0)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    best = 0.0
    pred = _answer_tokens(prediction)
    for answer in answers:
        gold = _answer_tokens(answer)
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


# -- retrieval runs -----------------------------------------------------------------------------------


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
    embedder: SentenceTransformerEmbedder, texts: Sequence[str], fingerprint: str, cache_dir: Path
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


def index_corpus(
    store: MilvusStore, kb: str, docs: Sequence[BeirDoc], vectors: np.ndarray, *, batch: int = 1000
) -> None:
    for start in range(0, len(docs), batch):
        part = docs[start : start + batch]
        chunks = [
            Chunk(chunk_id=Chunk.make_id(d.doc_id, 1, 0), doc_id=d.doc_id, kb=kb, text=d.body, title=d.title)
            for d in part
        ]
        store.upsert(kb, chunks, vectors[start : start + len(part)].tolist())
    store.flush(kb)


@dataclass
class RetrievalEval:
    dataset: str
    corpus: int
    queries: int
    modes: list[ModeReport] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)
    index_s: float = 0.0

    def as_json(self) -> dict[str, object]:
        return asdict(self)

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


RETRIEVAL_MODES = ("bm25", "dense", "hybrid", "rerank", "langchain")


def evaluate_retrieval(
    data: BeirSet,
    *,
    name: str,
    pipeline: QueryPipeline,
    store: MilvusStore,
    embedder: SentenceTransformerEmbedder,
    modes: Sequence[str],
    cache_dir: Path,
    work_dir: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> RetrievalEval:
    """Index the corpus through kb's store (and the LangChain baseline's), then run every mode's queries."""
    from retrieval.langchain_baseline import LangChainBaseline

    report = RetrievalEval(dataset=name, corpus=len(data.corpus), queries=len(data.queries))
    progress(f"embedding {len(data.corpus)} passages (cached under {cache_dir})")
    vectors = cached_passage_vectors(embedder, [d.body for d in data.corpus], data.fingerprint, cache_dir)
    t = time.perf_counter()
    progress("indexing into Milvus")
    index_corpus(store, "eval", data.corpus, vectors)
    report.index_s = time.perf_counter() - t
    for mode in modes:
        progress(f"mode {mode}")
        if mode == "langchain":
            baseline = LangChainBaseline(embedder, work_dir / "langchain.db")
            try:
                baseline.add([d.body for d in data.corpus], vectors, [d.doc_id for d in data.corpus])
                ranked, ms = run_queries(data.queries, lambda q, b=baseline: b.search(q, 100))  # type: ignore[misc]
            finally:
                baseline.close()
            result = score_run("langchain (baseline)", ranked, data.qrels, ms)
            result.note = "langchain-milvus, dense only, default index"
        elif mode == "rerank" and not pipeline.has_reranker:
            result = ModeReport(mode=mode, skipped=True, note="no reranker model could be loaded (see logs)")
        else:
            search_mode: SearchMode = "hybrid" if mode == "rerank" else mode  # type: ignore[assignment]
            effective: set[str] = set()
            search = _pipeline_search(pipeline, search_mode, rerank=mode == "rerank", effective=effective)
            ranked, ms = run_queries(data.queries, search)
            result = score_run(mode, ranked, data.qrels, ms)
            if effective != {search_mode}:
                result.note = f"answered as {'/'.join(sorted(effective))} (language-aware fusion)"
        report.modes.append(result)
    return report


def _pipeline_search(
    pipeline: QueryPipeline, mode: SearchMode, *, rerank: bool, effective: set[str]
) -> Callable[[str], list[str]]:
    def search(query: str) -> list[str]:
        found = pipeline.candidates(query, kb="eval", limit=100, mode=mode, rerank=rerank)
        effective.add(found.mode)  # language-aware fusion may answer with another mode
        return [h.chunk.doc_id for h in found.hits]

    return search

"""Evaluation data sets: BEIR retrieval sets, QA sets (docs/ + qa.jsonl), question files, and the
out-of-domain questions shipped with this package (evaluation/data/)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from core.text import detect_language


class DatasetError(ValueError):
    pass


def _rows(source: Traversable) -> Iterator[dict[str, object]]:
    """The JSON objects of a jsonl file, blank lines skipped; a bad line names the file and line."""
    with source.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{source}:{n}: not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"{source}:{n}: expected a JSON object")
            yield row


def _field(row: dict[str, object], key: str, where: Traversable) -> str:
    if key not in row:
        raise DatasetError(f"{where}: a row has no {key!r}: {row}")
    return str(row[key])


# -- BEIR -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BeirDoc:
    doc_id: str
    title: str
    text: str

    @property
    def body(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class BeirSet:
    name: str
    corpus: list[BeirDoc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    # Identifies the corpus text, so that cached passage vectors are reused only for the same passages.
    fingerprint: str


def load_beir(folder: Path) -> BeirSet:
    """corpus.jsonl, queries.jsonl and qrels.tsv (BEIR layout); queries without qrels are dropped."""
    paths = {name: folder / name for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv")}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        raise DatasetError(f"{folder} is not a BEIR data set: missing {', '.join(missing)}")
    digest = hashlib.sha256()
    corpus = []
    for row in _rows(paths["corpus.jsonl"]):
        doc_id = _field(row, "_id", paths["corpus.jsonl"])
        doc = BeirDoc(doc_id, str(row.get("title") or ""), str(row.get("text") or ""))
        digest.update(f"{doc.doc_id}\x00{doc.body}\x00".encode())
        corpus.append(doc)
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(paths["qrels.tsv"].read_text(encoding="utf-8").splitlines()):
        cols = line.split("\t")
        if n == 0 and not cols[-1].strip().lstrip("-").isdigit():
            continue  # header
        if len(cols) < 3 or not cols[2].strip().lstrip("-").isdigit():
            raise DatasetError(f"qrels.tsv line {n + 1}: expected query-id, corpus-id, integer score")
        if int(cols[2]) > 0:
            qrels.setdefault(cols[0], {})[cols[1]] = int(cols[2])
    queries = {
        _field(r, "_id", paths["queries.jsonl"]): _field(r, "text", paths["queries.jsonl"])
        for r in _rows(paths["queries.jsonl"])
    }
    queries = {q: text for q, text in queries.items() if q in qrels}
    if not corpus or not queries:
        raise DatasetError(f"{folder}: empty corpus or no queries with relevance judgements")
    return BeirSet(folder.name, corpus, queries, qrels, digest.hexdigest()[:16])


# -- QA sets ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QAItem:
    qid: str
    question: str
    answers: list[str]
    doc: str  # file name of the gold document under docs/
    answerable: bool


@dataclass(frozen=True)
class QASet:
    name: str
    docs: Path
    items: list[QAItem]


def _answers(row: dict[str, object]) -> list[str]:
    value = row.get("answers")
    return [str(a) for a in value] if isinstance(value, list) else []


def load_qa(folder: Path) -> QASet:
    docs, qa = folder / "docs", folder / "qa.jsonl"
    if not docs.is_dir() or not qa.is_file():
        raise DatasetError(f"{folder} is not a QA data set: it needs docs/ and qa.jsonl")
    items = [
        QAItem(
            qid=_field(r, "id", qa),
            question=_field(r, "question", qa),
            answers=_answers(r),
            doc=str(r.get("doc") or ""),
            answerable=bool(r.get("answerable", True)),
        )
        for r in _rows(qa)
    ]
    if not items:
        raise DatasetError(f"{qa} holds no questions")
    return QASet(folder.name, docs, items)


# -- question files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionFile:
    """A jsonl file of {"question", "answerable"?, "doc"?} rows, on disk or shipped with this package."""

    source: Traversable
    label: str  # how reports name it

    @classmethod
    def at(cls, path: Path) -> QuestionFile:
        if not path.is_file():
            raise DatasetError(f"no question file at {path}")
        return cls(path, str(path))

    def questions(self, *, answerable: bool, limit: int | None = None) -> list[str]:
        rows = _rows(self.source)
        picked = [_field(r, "question", self.source) for r in rows if bool(r.get("answerable", True)) == answerable]
        return picked[:limit] if limit else picked

    def spread(self, limit: int) -> list[str]:
        """Answerable questions taken round-robin over their documents, not the first document's dozens."""
        by_doc: dict[str, list[str]] = {}
        for r in _rows(self.source):
            if r.get("answerable", True):
                by_doc.setdefault(str(r.get("doc", "")), []).append(_field(r, "question", self.source))
        longest = max((len(g) for g in by_doc.values()), default=0)
        return [group[i] for i in range(longest) for group in by_doc.values() if i < len(group)][:limit]


OOD_LANGUAGES = ("en", "zh")


def packaged_ood(language: str) -> QuestionFile:
    """Out-of-domain questions shipped with kb (company policies, IT and HR: topics absent from XQuAD)."""
    if language not in OOD_LANGUAGES:
        raise DatasetError(f"no packaged out-of-domain questions in {language!r}; pass a file")
    name = f"ood_questions_{language}.jsonl"
    return QuestionFile(resources.files("evaluation") / "data" / name, f"evaluation/data/{name}")


def majority_language(questions: list[str]) -> str:
    """'zh' when most questions are Chinese, else 'en' (the packaged out-of-domain sets' languages)."""
    zh = sum(detect_language(q) == "zh" for q in questions)
    return "zh" if zh * 2 > len(questions) else "en"

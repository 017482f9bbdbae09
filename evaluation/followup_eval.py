"""`kb eval followup`: whether the conversation helps or hurts retrieval, on an extractive QA set.

Two kinds of second question, each asked with the conversation before it as `/ask` receives it (the
first question and kb's own answer to it):
- a *switch*: a self-contained question about another document than the one before it (XQuAD questions
  paired across articles; with `--other`, the first question comes from a set in the other language);
- a *follow-up*: a question written to lean on the one before it ("When was it rebuilt?"), from the
  follow-up file (evaluation/data/followups_<set>.jsonl: `first` names the QA item it follows).

Each is searched three ways, and the top source compared with the question's gold document:
- `alone`: the question as asked, without its history (the reference a switch must not fall below);
- `always`: what kb did before follow-ups were judged: every question with history rewritten (by the
  model, or the previous user turn put before it) and searched as rewritten only;
- `kb`: kb's path today (AnswerService.retrieve): judged by retrieval/followup.py, a follow-up rewritten
  and searched beside the question as asked.
The model condenses when the configured model server answers; otherwise both rewriting ways fall back
to the previous user turn, and the report says so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from app.answers.service import Question
from app.container import Container
from app.settings import Settings
from core.types import Access, ChatMessage
from evaluation.access import EVERYTHING
from evaluation.datasets import DatasetError, QAItem, QASet
from evaluation.scratch import scratch_container
from retrieval.condense import Condensed, fallback_query

Progress = Callable[[str], None]
STRATEGIES = ("alone", "always", "kb")


@dataclass(frozen=True)
class Turn:
    kind: str  # switch | follow-up
    question: str
    doc: str
    first: QAItem


@dataclass
class Tally:
    questions: int = 0
    top1: int = 0
    top5: int = 0

    def add(self, docs: Sequence[str], gold: str) -> None:
        self.questions += 1
        self.top1 += bool(docs) and docs[0] == gold
        self.top5 += gold in docs[:5]

    @property
    def top1_rate(self) -> float:
        return self.top1 / self.questions if self.questions else 0.0

    @property
    def top5_rate(self) -> float:
        return self.top5 / self.questions if self.questions else 0.0


@dataclass
class FollowupReport:
    dataset: str
    condense_model: str  # the model that rewrote, or "none (previous user turn)"
    tallies: dict[str, dict[str, Tally]] = field(default_factory=dict)  # kind -> strategy -> tally
    condensed: dict[str, int] = field(default_factory=dict)  # kind -> questions kb judged follow-ups

    def table(self) -> str:
        lines = [
            f"{self.dataset}; condensing model: {self.condense_model}",
            "",
            "| second question | n | judged follow-up | top source alone | always rewritten (before) | kb |",
            "|---|---|---|---|---|---|",
        ]
        for kind, by_strategy in self.tallies.items():
            n = by_strategy["alone"].questions
            cells = [f"{by_strategy[s].top1_rate:.2f} (top-5 {by_strategy[s].top5_rate:.2f})" for s in STRATEGIES]
            lines.append(f"| {kind} | {n} | {self.condensed.get(kind, 0)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def packaged_followups(name: str) -> Traversable:
    return resources.files("evaluation") / "data" / f"followups_{name}.jsonl"


def load_followups(source: Traversable | Path, qa: QASet) -> list[Turn]:
    by_id = {item.qid: item for item in qa.items}
    turns = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            first = by_id[str(row["first"])]
            turns.append(Turn("follow-up", str(row["question"]), str(row["doc"]), first))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{source} line {number}: not a follow-up of {qa.name} ({exc!r})") from exc
    return turns


def switches(qa: QASet, limit: int, other: QASet | None = None) -> list[Turn]:
    """Second questions taken round-robin over the articles, each after a question about the next article
    (of `other`, when given: a switch of language too)."""
    by_doc: dict[str, list[QAItem]] = {}
    for item in qa.items:
        if item.answerable and item.doc:
            by_doc.setdefault(item.doc, []).append(item)
    docs = sorted(by_doc)
    firsts = other_firsts(other, docs) if other else None
    turns: list[Turn] = []
    for i in range(max((len(v) for v in by_doc.values()), default=0)):
        for d, doc in enumerate(docs):
            if i < len(by_doc[doc]) and len(turns) < limit:
                pool = firsts or by_doc[docs[(d + 1) % len(docs)]]
                first = pool[(i + d) % len(pool)]
                turns.append(Turn("switch", by_doc[doc][i].question, doc, first))
    return turns


def other_firsts(other: QASet, docs: list[str]) -> list[QAItem]:
    return [item for item in other.items if item.answerable and item.doc not in docs] or [
        item for item in other.items if item.answerable
    ]


class FollowupRun:
    def __init__(self, container: Container, kb: str) -> None:
        self._c = container
        self._kb = kb
        self._answers: dict[str, str] = {}

    async def history(self, first: QAItem) -> list[ChatMessage]:
        """The first question and kb's own (extractive: no model) answer to it, as the web chat sends them."""
        if first.qid not in self._answers:
            answer = await self._c.answers.ask(
                Question(text=first.question, access=Access.everything(), kb=self._kb, answer_mode="extractive")
            )
            self._answers[first.qid] = answer.answer
        return [
            ChatMessage(role="user", content=first.question),
            ChatMessage(role="assistant", content=self._answers[first.qid]),
        ]

    def docs(self, query: str, rewrite: str | None = None) -> list[str]:
        found = self._c.query.search(query, flt=EVERYTHING, kb=self._kb, top_k=5, rewrite=rewrite)
        return _names(h.chunk.doc_id for h in found.hits)

    async def always(self, turn: Turn, history: list[ChatMessage]) -> list[str]:
        fallback = Condensed(fallback_query(turn.question, history), "fallback")
        condenser = self._c.condenser
        rewritten = await condenser.rewrite(turn.question, history, fallback) if condenser else fallback
        return self.docs(rewritten.query)

    async def kb(self, turn: Turn, history: list[ChatMessage]) -> tuple[list[str], bool]:
        question = Question(text=turn.question, access=Access.everything(), kb=self._kb, top_k=5, history=history)
        found = await self._c.answers.retrieve(question)
        return _names(h.chunk.doc_id for h in found.hits), bool(found.timings.get("condensed"))


def _names(doc_ids: Iterable[str]) -> list[str]:
    # Documents ingested from a folder are named by their path in it; the QA set names the file.
    return list(dict.fromkeys(Path(d).name for d in doc_ids))


async def condense_model(container: Container) -> str:
    if container.condenser is None:
        return "none (condensing off)"
    if not await container.generator.ready():
        return "none: the model server is down (the previous user turn is put before the question)"
    return container.settings.llm.model


def evaluate_followups(
    settings: Settings, qa: QASet, turns_by_kind: dict[str, list[Turn]], *, progress: Progress = lambda _: None
) -> FollowupReport:
    """Ingests the set's documents into a scratch kb, then searches every turn the three ways."""
    with scratch_container(settings) as (container, _):
        progress(f"ingesting {qa.docs}")
        container.ingest.ingest_paths([qa.docs], kb="default")
        return asyncio.run(_evaluate(container, qa, turns_by_kind, progress))


async def _evaluate(
    container: Container, qa: QASet, turns_by_kind: dict[str, list[Turn]], progress: Progress
) -> FollowupReport:
    report = FollowupReport(qa.name, await condense_model(container))
    run = FollowupRun(container, "default")
    for kind, turns in turns_by_kind.items():
        progress(f"{kind}: {len(turns)} questions")
        tallies = report.tallies[kind] = {s: Tally() for s in STRATEGIES}
        report.condensed[kind] = 0
        for turn in turns:
            history = await run.history(turn.first)
            tallies["alone"].add(run.docs(turn.question), turn.doc)
            tallies["always"].add(await run.always(turn, history), turn.doc)
            docs, condensed = await run.kb(turn, history)
            tallies["kb"].add(docs, turn.doc)
            report.condensed[kind] += condensed
    await container.generator.close()
    return report

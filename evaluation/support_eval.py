"""`kb eval support`: calibrate the support threshold that decides whether an answer sentence is grounded.

For each answerable question of a QA set (docs/ + qa.jsonl), a *claim* stands for a sentence that answers
it: the question's words plus the gold answer ("How many points did the Panthers' defense surrender?
308"). The claim is scored (serving/support.py, the scorer kb answers with) against
- the paragraph that holds the gold answer: a supported claim;
- the paragraph of the same article most like the claim that does not hold the answer: a claim citing
  the wrong passage;
- the gold paragraph with the answer swapped for another question's answer from the same article: a
  claim that states what the passage does not say.
The threshold reported is the one that best separates the first from the other two (the highest mean of
the two recalls, i.e. balanced accuracy), for the scores the configured embedder takes part in and for
lexical scores alone (languages the embedder does not understand).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.settings import Settings
from core.protocols import Embedder
from evaluation.datasets import QAItem, QASet
from evaluation.metrics import contains_answer
from serving.support import Haystack, Passage, Reading, SupportScorer, content_terms, lexical_support

Progress = Callable[[str], None]


@dataclass
class Separation:
    """Support scores of supported claims against unsupported ones, and the threshold between them."""

    supported: list[float] = field(default_factory=list)
    wrong_passage: list[float] = field(default_factory=list)
    wrong_fact: list[float] = field(default_factory=list)
    threshold: float = 0.0
    supported_recall: float = 0.0  # supported claims at or above the threshold
    wrong_passage_recall: float = 0.0  # wrong-passage claims below it
    wrong_fact_recall: float = 0.0

    def calibrate(self) -> None:
        negatives = self.wrong_passage + self.wrong_fact
        if not self.supported or not negatives:
            return
        best = (-1.0, 0.0)
        for t in sorted({0.0, *self.supported, *negatives}):
            recall = sum(s >= t for s in self.supported) / len(self.supported)
            rejected = sum(s < t for s in negatives) / len(negatives)
            best = max(best, ((recall + rejected) / 2, -t))
        self.threshold = round(-best[1], 3)
        self.supported_recall = _share(self.supported, lambda s: s >= self.threshold)
        self.wrong_passage_recall = _share(self.wrong_passage, lambda s: s < self.threshold)
        self.wrong_fact_recall = _share(self.wrong_fact, lambda s: s < self.threshold)

    def at(self, threshold: float) -> tuple[float, float, float]:
        return (
            _share(self.supported, lambda s: s >= threshold),
            _share(self.wrong_passage, lambda s: s < threshold),
            _share(self.wrong_fact, lambda s: s < threshold),
        )


def _share(values: Sequence[float], test: Callable[[float], bool]) -> float:
    return sum(1 for v in values if test(v)) / len(values) if values else 0.0


@dataclass
class SupportReport:
    dataset: str
    claims: int
    embedder_understands: bool
    combined: Separation  # lexical and cosine averaged (empty when the embedder does not understand)
    lexical: Separation
    configured_threshold: float
    configured_lexical_threshold: float

    def table(self) -> str:
        rows = [f"{self.dataset}: {self.claims} claims (question + gold answer)"]
        for name, sep, configured in (
            ("lexical + cosine", self.combined, self.configured_threshold),
            ("lexical only", self.lexical, self.configured_lexical_threshold),
        ):
            if not sep.supported:
                rows.append(f"{name:<17} n/a (the embedder does not understand this language)")
                continue
            now = sep.at(configured)
            rows.append(
                f"{name:<17} best threshold {sep.threshold:.3f}: supported {sep.supported_recall:.3f} kept, "
                f"wrong passage {sep.wrong_passage_recall:.3f} / wrong fact {sep.wrong_fact_recall:.3f} rejected; "
                f"configured {configured:.3f}: {now[0]:.3f} / {now[1]:.3f} / {now[2]:.3f}"
            )
        return "\n".join(rows)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip() and not p.lstrip().startswith("#")]


def evaluate_support(
    data: QASet, settings: Settings, embedder: Embedder | None, *, limit: int, progress: Progress = lambda _: None
) -> SupportReport:
    llm = settings.llm
    scorer = SupportScorer(embedder, threshold=llm.support_threshold, lexical_threshold=llm.lexical_support_threshold)
    lexical_scorer = SupportScorer(None, threshold=llm.lexical_support_threshold, lexical_threshold=0.0)
    items = [i for i in data.items if i.answerable and i.answers][: limit or None]
    by_doc: dict[str, list[QAItem]] = {}
    for item in data.items:
        by_doc.setdefault(item.doc, []).append(item)
    combined, lexical = Separation(), Separation()
    rng = random.Random(0)
    readings: dict[str, tuple[list[str], Reading, Reading]] = {}
    understands = False
    progress(f"scoring {len(items)} claims")
    for n, item in enumerate(items, 1):
        if item.doc not in readings:
            paragraphs = _paragraphs((data.docs / item.doc).read_text(encoding="utf-8"))
            passages = [Passage(i + 1, p) for i, p in enumerate(paragraphs)]
            readings[item.doc] = (paragraphs, scorer.read(passages), lexical_scorer.read(passages))
        paragraphs, reading, lexical_reading = readings[item.doc]
        answer = item.answers[0]
        claim = f"{item.question} {answer}"
        holding = [i for i, p in enumerate(paragraphs) if contains_answer(p, [answer])]
        if not holding:
            continue
        terms = content_terms(claim)

        def likeness(i: int) -> float:
            return lexical_support(terms, Haystack.of(paragraphs[i]), numbers_must_match=False)  # noqa: B023

        gold = max(holding, key=likeness)
        others = [i for i in range(len(paragraphs)) if i not in holding]
        understands = understands or reading.understood(claim)
        targets: list[tuple[list[float], list[float], str, int]] = [
            (combined.supported, lexical.supported, claim, gold)
        ]
        if others:
            targets.append((combined.wrong_passage, lexical.wrong_passage, claim, max(others, key=likeness)))
        swaps = [
            a for other in by_doc[item.doc] for a in other.answers[:1] if not contains_answer(paragraphs[gold], [a])
        ]
        if swaps:
            targets.append((combined.wrong_fact, lexical.wrong_fact, f"{item.question} {rng.choice(swaps)}", gold))
        for both, lexical_only, text, index in targets:
            if reading.understood(text):
                both.append(reading.support(text, [index + 1]))
            lexical_only.append(lexical_reading.support(text, [index + 1]))
        if n % 100 == 0:
            progress(f"  {n}/{len(items)}")
    combined.calibrate()
    lexical.calibrate()
    return SupportReport(
        dataset=data.name, claims=len(lexical.supported), embedder_understands=understands, combined=combined,
        lexical=lexical, configured_threshold=llm.support_threshold,
        configured_lexical_threshold=llm.lexical_support_threshold,
    )  # fmt: skip

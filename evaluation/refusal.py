"""`kb eval refusal`: how often kb refuses answerable and out-of-domain questions, and where the relevance
threshold (`KB_RETRIEVAL__MIN_RELEVANCE__*`) should sit.

Answerable questions come from an extractive QA set whose documents are the knowledge base (XQuAD-en,
say); out-of-domain ones are questions about topics absent from it (a company's internal policies: the
sets in evaluation/data/, in the answerable questions' language unless a file is given). Each question
goes through retrieval exactly as `/ask` does up to the threshold check; the model is never called. The
threshold is fitted on both sets, leaving a margin under the answerable target; two-fold
cross-validation (fit on even positions, measure on odd, and back) shows how the rates hold on questions
the fit did not see.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.container import Container
from app.settings import Settings
from evaluation.access import EVERYTHING
from evaluation.datasets import DatasetError, QuestionFile, majority_language, packaged_ood
from retrieval.relevance import lexical_coverage

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Scored:
    question: str
    answerable: bool
    kind: str  # the relevance measure that applied: rerank | cosine | lexical | none
    value: float | None
    lexical: float | None  # share of the question's terms in the best hits (the `cosine_lexical` check)


@dataclass(frozen=True)
class Cut:
    threshold: float
    lexical: float = 0.0  # 0: no lexical check beside the main measure

    def refuses(self, s: Scored) -> bool:
        if s.value is None or s.value < self.threshold:
            return True
        return self.lexical > 0 and (s.lexical is None or s.lexical < self.lexical)


def refusal_rate(scored: Sequence[Scored], cut: Cut) -> float:
    """Share of these questions the cut refuses; NaN when there are none (no rate, rather than 0%)."""
    return sum(1 for s in scored if cut.refuses(s)) / len(scored) if scored else math.nan


def calibrate(answerable: Sequence[Scored], ood: Sequence[Scored], budget: float, with_lexical: bool) -> Cut | None:
    """The cut refusing the most out-of-domain questions while refusing at most `budget` of the answerable
    ones (ties: fewer answerable refused). The answerable rate is measured on many questions and carries
    over to unseen ones; the out-of-domain rate, on a few dozen, is the noisier one, hence maximised."""
    both = [*answerable, *ood]
    values = [s.value for s in both if s.value is not None]
    if not values:
        return None
    lo, hi = min(values), max(values)
    steps = [round(lo + i * (hi - lo) / 200, 4) for i in range(201)]
    lexicals = [0.0]
    if with_lexical:
        # Midway between observed coverages, so that a cut never lands on a question's exact value.
        seen = sorted({s.lexical for s in both if s.lexical is not None})
        lexicals += [round((x + y) / 2, 3) for x, y in itertools.pairwise(seen)]
    best: tuple[float, float, Cut] | None = None
    for lexical in lexicals:
        for threshold in steps:
            cut = Cut(threshold, lexical)
            refused_answerable = refusal_rate(answerable, cut)
            if refused_answerable > budget:
                break  # higher thresholds only refuse more
            key = (refusal_rate(ood, cut), -refused_answerable)
            if best is None or key > best[:2]:
                best = (*key, cut)
    return best[2] if best else None


@dataclass(frozen=True)
class Rates:
    threshold: float
    lexical: float
    answerable_refused: float
    ood_refused: float

    @classmethod
    def of(cls, answerable: Sequence[Scored], ood: Sequence[Scored], cut: Cut) -> Rates:
        return cls(cut.threshold, cut.lexical, refusal_rate(answerable, cut), refusal_rate(ood, cut))

    def line(self, name: str) -> str:
        lexical = f" + lexical {self.lexical:.3f}" if self.lexical else ""
        return (
            f"{name} {self.threshold:.3f}{lexical}: answerable refused {self.answerable_refused:.1%}, "
            f"out-of-domain refused {self.ood_refused:.1%}"
        )


@dataclass(frozen=True)
class Calibrated(Rates):
    meets_targets: bool = False
    held_out_folds: list[Rates] = field(default_factory=list)


@dataclass(frozen=True)
class Targets:
    max_answerable: float = 0.05  # refuse at most this share of answerable questions
    min_ood: float = 0.90  # refuse at least this share of out-of-domain ones
    margin: float = 0.01  # calibrate for max_answerable minus this, leaving room for unseen questions

    @property
    def budget(self) -> float:
        return max(self.max_answerable - self.margin, 0.0)

    def met(self, rates: Rates) -> bool:
        return rates.answerable_refused <= self.max_answerable and rates.ood_refused >= self.min_ood


def cross_validated(a: Sequence[Scored], o: Sequence[Scored], budget: float, with_lexical: bool) -> list[Rates]:
    """Two folds (even and odd positions): fit on one, measure on the other."""
    folds = []
    for fit, test in (((a[::2], o[::2]), (a[1::2], o[1::2])), ((a[1::2], o[1::2]), (a[::2], o[::2]))):
        cut = calibrate(*fit, budget, with_lexical)
        if cut is not None:
            folds.append(Rates.of(*test, cut))
    return folds


@dataclass(frozen=True)
class QuestionCounts:
    answerable: int
    out_of_domain: int


@dataclass
class Measure:
    """Rates for the questions one relevance measure (rerank, cosine, lexical) applied to."""

    questions: QuestionCounts
    configured: Rates
    calibrated: Calibrated | None = None
    # Cosine only: the cut with the lexical check beside it (KB_RETRIEVAL__MIN_RELEVANCE__COSINE_LEXICAL).
    calibrated_with_lexical: Calibrated | None = None


@dataclass
class RefusalReport:
    kb: str
    qa: str
    ood: str
    answerable: int
    out_of_domain: int
    targets: Targets
    measures: dict[str, Measure] = field(default_factory=dict)

    def text(self) -> str:
        lines = [
            f"{self.answerable} answerable ({Path(self.qa).name}), "
            f"{self.out_of_domain} out-of-domain ({Path(self.ood).name})"
        ]
        for kind, m in self.measures.items():
            lines.append(m.configured.line(f"{kind} configured"))
            variants = [("calibrated", m.calibrated)]
            if kind == "cosine":
                variants.append(("calibrated_with_lexical", m.calibrated_with_lexical))
            for name, cal in variants:
                if cal is None:
                    budget = self.targets.budget
                    lines.append(f"{kind} {name}: no threshold keeps answerable refusals under {budget:.0%}")
                    continue
                lines.append(cal.line(f"{kind} {name}") + ("" if cal.meets_targets else "  (misses a target)"))
                lines += [f"    held-out fold: {f.line('fitted')}" for f in cal.held_out_folds]
        return "\n".join(lines)


def measure(kind: str, a: list[Scored], o: list[Scored], configured: Cut, targets: Targets) -> Measure:
    result = Measure(QuestionCounts(len(a), len(o)), Rates.of(a, o, configured))
    for with_lexical in (False, True) if kind == "cosine" else (False,):
        cut = calibrate(a, o, targets.budget, with_lexical)
        if cut is None:
            continue
        rates = Rates.of(a, o, cut)
        calibrated = Calibrated(
            rates.threshold, rates.lexical, rates.answerable_refused, rates.ood_refused,
            meets_targets=targets.met(rates), held_out_folds=cross_validated(a, o, targets.budget, with_lexical),
        )  # fmt: skip
        if with_lexical:
            result.calibrated_with_lexical = calibrated
        else:
            result.calibrated = calibrated
    return result


def evaluate_refusal(
    settings: Settings,
    qa: QuestionFile,
    *,
    ood: QuestionFile | None = None,
    docs: Path | None = None,
    kb: str = "xquad_en",
    limit: int | None = None,
    targets: Targets = Targets(),
    progress: Progress = lambda _: None,
) -> RefusalReport:
    """Scores the questions against `kb` in the user's KB_HOME, ingesting `docs` (default: the folder
    `docs/` beside the QA file) first when that knowledge base is empty, so reruns reuse the index."""
    answerable_questions = qa.questions(answerable=True, limit=limit)
    if not answerable_questions:
        raise DatasetError(f"{qa.label} holds no answerable questions")
    ood = ood or packaged_ood(majority_language(answerable_questions))
    container = Container(settings)
    if not container.registry.documents(kb):
        folder = docs or (qa.source.parent / "docs" if isinstance(qa.source, Path) else None)
        if folder is None or not folder.is_dir():
            raise DatasetError(f"knowledge base {kb!r} is empty and {folder} does not exist: pass --docs")
        progress(f"ingesting {folder} into {kb!r}...")
        container.ingest.ingest_paths([folder], kb=kb)
    pipeline, top_k = container.query, settings.retrieval.top_k

    def score(question: str, answerable: bool) -> Scored:
        found = pipeline.candidates(question, flt=EVERYTHING, kb=kb, limit=max(top_k, settings.retrieval.candidates))
        relevance = pipeline.relevance(kb, question, found, top_k)
        lexical = lexical_coverage(question, [h.chunk.text for h in found.hits[:top_k]])
        return Scored(question, answerable, relevance.kind, relevance.value, lexical)

    progress(f"scoring {len(answerable_questions)} answerable questions")
    answerable = [score(q, True) for q in answerable_questions]
    out_of_domain = [score(q, False) for q in ood.questions(answerable=False)]
    report = RefusalReport(kb, qa.label, ood.label, len(answerable), len(out_of_domain), targets)
    thresholds = pipeline.thresholds_for(majority_language(answerable_questions))
    for kind in sorted({s.kind for s in answerable + out_of_domain} - {"none"}):
        configured = Cut(float(getattr(thresholds, kind, 0.0)), thresholds.cosine_lexical if kind == "cosine" else 0.0)
        a = [s for s in answerable if s.kind == kind]
        o = [s for s in out_of_domain if s.kind == kind]
        report.measures[kind] = measure(kind, a, o, configured, targets)
    return report

"""`kb eval refusal`: how often kb refuses answerable and out-of-domain questions, and where the relevance
threshold (`KB_RETRIEVAL__MIN_RELEVANCE__*`) should sit.

Answerable questions come from an extractive QA set whose documents are the knowledge base (XQuAD-en by
default); out-of-domain ones are questions about topics absent from it (a company's internal policies,
tests/data/ood_questions_en.jsonl). Each question goes through retrieval exactly as `/ask` does up to the
threshold check; the model is never called. The threshold is fitted on both sets, leaving `--margin`
under the answerable target; two-fold cross-validation (fit on even positions, measure on odd, and back)
shows how the rates hold on questions the fit did not see.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli._common import JsonOpt, emit, eval_cli, fail, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_QA = ROOT.parent / "shared" / "eval" / "xquad_en" / "qa.jsonl"
DEFAULT_OOD = ROOT / "tests" / "data" / "ood_questions_en.jsonl"


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


def _questions(path: Path, answerable: bool, limit: int | None) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    picked = [str(r["question"]) for r in rows if bool(r.get("answerable", True)) == answerable]
    return picked[:limit] if limit else picked


def refusal_rate(scored: list[Scored], cut: Cut) -> float:
    return sum(1 for s in scored if cut.refuses(s)) / len(scored) if scored else float("nan")


def calibrate(answerable: list[Scored], ood: list[Scored], budget: float, with_lexical: bool) -> Cut | None:
    """The cut refusing the most out-of-domain questions while refusing at most `budget` of the answerable
    ones (ties: fewer answerable refused). The answerable rate is measured on many questions and carries
    over to unseen ones; the out-of-domain rate, on a few dozen, is the noisier one, hence maximised."""
    values = [s.value for s in answerable + ood if s.value is not None]
    if not values:
        return None
    lo, hi = min(values), max(values)
    steps = [round(lo + i * (hi - lo) / 200, 4) for i in range(201)]
    lexicals = [0.0]
    if with_lexical:
        # Midway between observed coverages, so that a cut never lands on a question's exact value.
        seen = sorted({s.lexical for s in answerable + ood if s.lexical is not None})
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


def _rates(a: list[Scored], o: list[Scored], cut: Cut) -> dict[str, float]:
    return {
        "threshold": cut.threshold,
        "lexical": cut.lexical,
        "answerable_refused": refusal_rate(a, cut),
        "ood_refused": refusal_rate(o, cut),
    }


def _cross_validated(a: list[Scored], o: list[Scored], budget: float, with_lexical: bool) -> list[dict[str, float]]:
    """Two folds (even and odd positions): fit on one, measure on the other."""
    folds = []
    for fit, test in (((a[::2], o[::2]), (a[1::2], o[1::2])), ((a[1::2], o[1::2]), (a[::2], o[::2]))):
        cut = calibrate(*fit, budget, with_lexical)
        if cut is not None:
            folds.append(_rates(*test, cut))
    return folds


def _line(name: str, r: dict[str, float]) -> str:
    lexical = f" + lexical {r['lexical']:.3f}" if r["lexical"] else ""
    return (
        f"{name} {r['threshold']:.3f}{lexical}: answerable refused {r['answerable_refused']:.1%}, "
        f"out-of-domain refused {r['ood_refused']:.1%}"
    )


@eval_cli.command("refusal")
def eval_refusal(  # noqa: PLR0917  (Typer options)
    qa: Annotated[Optional[Path], typer.Option(help="Answerable questions (jsonl); default XQuAD-en.")] = None,  # noqa: UP045
    ood: Annotated[Optional[Path], typer.Option(help="Out-of-domain questions (jsonl).")] = None,  # noqa: UP045
    docs: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Documents to ingest into --kb when it is empty; default the QA set's docs/."),
    ] = None,
    kb: Annotated[str, typer.Option("--kb", help="Knowledge base holding the QA set's documents.")] = "xquad_en",
    limit: Annotated[int, typer.Option(min=0, help="At most this many answerable questions (0: all).")] = 0,
    max_answerable: Annotated[float, typer.Option(help="Target: refuse at most this share of answerable.")] = 0.05,
    min_ood: Annotated[float, typer.Option(help="Target: refuse at least this share of out-of-domain.")] = 0.90,
    margin: Annotated[float, typer.Option(help="Calibrate for max-answerable minus this (room for unseen).")] = 0.01,
    as_json: JsonOpt = False,
) -> None:
    """Refusal rates of answerable vs out-of-domain questions, at the configured and the calibrated threshold."""
    from app.container import Container
    from retrieval.relevance import lexical_coverage

    qa_path, ood_path = qa or DEFAULT_QA, ood or DEFAULT_OOD
    for path in (qa_path, ood_path):
        if not path.is_file():
            fail(f"no question file at {path}")
    settings = load_settings()
    container = Container(settings)
    if not container.registry.documents(kb):
        folder = docs or qa_path.parent / "docs"
        if not folder.is_dir():
            fail(f"knowledge base {kb!r} is empty and {folder} does not exist: pass --docs")
        typer.echo(f"ingesting {folder} into {kb!r}...", err=True)
        container.ingest.ingest_paths([folder], kb=kb)
    pipeline, top_k = container.query, settings.retrieval.top_k

    def score(question: str, answerable: bool) -> Scored:
        found = pipeline.candidates(question, kb=kb, limit=max(top_k, settings.retrieval.candidates))
        relevance = pipeline.relevance(kb, question, found, top_k)
        lexical = lexical_coverage(question, [h.chunk.text for h in found.hits[:top_k]])
        return Scored(question, answerable, relevance.kind, relevance.value, lexical)

    answerable = [score(q, True) for q in _questions(qa_path, True, limit or None)]
    out_of_domain = [score(q, False) for q in _questions(ood_path, False, None)]
    kinds = sorted({s.kind for s in answerable + out_of_domain} - {"none"})
    report: dict[str, object] = {
        "kb": kb, "qa": str(qa_path), "ood": str(ood_path), "answerable": len(answerable),
        "out_of_domain": len(out_of_domain), "targets": {"max_answerable": max_answerable, "min_ood": min_ood},
    }  # fmt: skip
    lines = [f"{len(answerable)} answerable ({qa_path.name}), {len(out_of_domain)} out-of-domain ({ood_path.name})"]
    measures: dict[str, object] = {}
    thresholds = settings.retrieval.min_relevance
    budget = max(max_answerable - margin, 0.0)
    for kind in kinds:
        a = [s for s in answerable if s.kind == kind]
        o = [s for s in out_of_domain if s.kind == kind]
        configured = Cut(float(getattr(thresholds, kind, 0.0)), thresholds.cosine_lexical if kind == "cosine" else 0.0)
        entry: dict[str, object] = {"questions": {"answerable": len(a), "out_of_domain": len(o)}}
        entry["configured"] = _rates(a, o, configured)
        lines.append(_line(f"{kind} configured", entry["configured"]))  # type: ignore[arg-type]
        variants = [("calibrated", False)] + ([("calibrated_with_lexical", True)] if kind == "cosine" else [])
        for name, with_lexical in variants:
            cut = calibrate(a, o, budget, with_lexical)
            if cut is None:
                lines.append(f"{kind} {name}: no threshold keeps answerable refusals under {budget:.0%}")
                continue
            rates = _rates(a, o, cut)
            meets = rates["answerable_refused"] <= max_answerable and rates["ood_refused"] >= min_ood
            folds = _cross_validated(a, o, budget, with_lexical)
            entry[name] = {**rates, "meets_targets": meets, "held_out_folds": folds}
            lines.append(_line(f"{kind} {name}", rates) + ("" if meets else "  (misses a target)"))
            lines += [f"    held-out fold: {_line('fitted', f)}" for f in folds]
        measures[kind] = entry
    report["measures"] = measures
    emit(report, as_json, "\n".join(lines))

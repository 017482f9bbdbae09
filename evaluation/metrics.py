"""Ranking, answer and latency metrics.

Ranking metrics follow BEIR/TREC conventions (binary or graded qrels, nDCG with log2 discount, recall
over the relevant set, MRR of the first relevant hit); answer scores follow SQuAD (EM/F1 after
normalisation; characters for Chinese, which has no spaces).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np

from core.text import detect_language


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
    """The q-th percentile (0-100) with linear interpolation between samples (numpy's default, the same
    as `statistics.quantiles(method="inclusive")`).

    No samples give NaN, not 0: a benchmark where every request failed has no latency, and 0 ms would
    read as instant. Reports turn NaN into JSON null (evaluation/reports.py)."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=float), q))


def mean(values: Sequence[float]) -> float | None:
    """The average, or None when there is nothing to average (a rate over no questions is unknown)."""
    return sum(values) / len(values) if values else None


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


def _squeezed(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether the text holds one of the gold answers verbatim, ignoring case and whitespace ("136 次" is
    in "擒杀136次"): the question "does the answer state the fact", which EM/F1 on a sentence-long answer
    cannot ask."""
    squeezed = _squeezed(text)
    return any(_squeezed(a) and _squeezed(a) in squeezed for a in answers)

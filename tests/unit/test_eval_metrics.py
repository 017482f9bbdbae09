from __future__ import annotations

import json
import math

import pytest

from evaluation.metrics import contains_answer, exact_match, f1_score, mean, mrr_at, ndcg_at, percentile, recall_at
from evaluation.reports import to_json
from evaluation.support_eval import Separation
from retrieval.relevance import lexical_coverage


def test_ranking_metrics_by_hand() -> None:
    rel = {"a": 1, "b": 1}
    ranked = ["x", "a", "y", "b"]
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at(ranked, rel, 10) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert ndcg_at(["a", "b"], rel, 10) == pytest.approx(1.0)
    assert recall_at(ranked, rel, 2) == 0.5 and recall_at(ranked, rel, 4) == 1.0
    assert mrr_at(ranked, rel, 10) == 0.5 and mrr_at(["x"], rel, 10) == 0.0


def test_percentile_interpolates_and_has_no_value_for_no_samples() -> None:
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == pytest.approx(25.0)
    assert percentile([10.0, 20.0, 30.0, 40.0], 95) == pytest.approx(38.5)  # linear between 30 and 40
    assert percentile([7.0], 95) == 7.0
    # No samples (every request failed) is no latency, not 0 ms; the JSON report says null.
    assert math.isnan(percentile([], 50))
    assert json.loads(to_json({"p50_ms": percentile([], 50), "rate": mean([])})) == {"p50_ms": None, "rate": None}
    assert mean([1.0, 0.0]) == 0.5


def test_squad_style_answer_scores_english_and_chinese() -> None:
    assert exact_match("The Denver Broncos.", ["Denver Broncos"]) == 1.0
    assert f1_score("the Broncos of Denver", ["Denver Broncos"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    # Chinese compares characters: 3 of 4 predicted characters are in the 3-character gold answer.
    assert f1_score("丹佛野马队", ["野马队"]) == pytest.approx(2 * 0.6 * 1.0 / 1.6)
    assert exact_match("四次。", ["四次"]) == 1.0
    assert f1_score("", ["x"]) == 0.0


def test_lexical_coverage_ignores_stop_words_and_handles_chinese() -> None:
    assert lexical_coverage("What is the VPN password policy?", ["VPN password rules"]) == pytest.approx(2 / 3)
    assert lexical_coverage("报销单要在多少天内提交？", ["报销单必须在30天内提交。"]) == pytest.approx(4 / 5)
    assert lexical_coverage("anything", []) is None


def test_contains_answer_ignores_case_and_spaces() -> None:
    assert contains_answer("New employees get 15 days [1].", ["15 days"])
    assert contains_answer("贾里德职业生涯擒杀136次[1]。", ["136 次"])
    assert contains_answer("The DENVER Broncos won.", ["Denver Broncos"])
    assert not contains_answer("New employees get 15 days [1].", ["25 days", ""])


def test_support_calibration_separates_supported_from_unsupported_claims() -> None:
    sep = Separation(supported=[0.9, 0.8, 0.7, 0.4], wrong_passage=[0.1, 0.2, 0.5], wrong_fact=[0.0, 0.6])
    sep.calibrate()
    assert sep.threshold == 0.7  # keeps 3 of 4 supported, rejects all 5 others: the best balance
    assert (sep.supported_recall, sep.wrong_passage_recall, sep.wrong_fact_recall) == (0.75, 1.0, 1.0)

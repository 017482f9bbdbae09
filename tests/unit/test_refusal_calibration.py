from __future__ import annotations

from evaluation.datasets import majority_language, packaged_ood
from evaluation.refusal import Cut, QuestionCounts, RefusalReport, Scored, Targets, calibrate, measure, refusal_rate


def scored(answerable: bool, value: float | None, lexical: float = 1.0) -> Scored:
    return Scored("q", answerable, "cosine", value, lexical)


def test_a_question_without_hits_is_always_refused() -> None:
    assert Cut(0.0).refuses(scored(True, None))
    assert not Cut(0.0).refuses(scored(True, 0.1))


def test_the_lexical_check_refuses_what_cosine_lets_through() -> None:
    off_topic_but_close = scored(False, 0.5, lexical=0.1)
    assert not Cut(0.3).refuses(off_topic_but_close)
    assert Cut(0.3, lexical=0.2).refuses(off_topic_but_close)


def test_calibration_refuses_most_out_of_domain_within_the_answerable_budget() -> None:
    answerable = [scored(True, v / 100) for v in range(40, 100)] + [scored(True, 0.2)]
    ood = [scored(False, v / 100, lexical=0.0 if v % 2 else 1.0) for v in range(10, 45)]
    cosine_only = calibrate(answerable, ood, budget=0.05, with_lexical=False)
    assert cosine_only is not None and refusal_rate(answerable, cosine_only) <= 0.05
    both = calibrate(answerable, ood, budget=0.05, with_lexical=True)
    assert both is not None and both.lexical > 0
    # Off-topic questions as close as real ones but sharing no terms: only the lexical check catches them.
    assert refusal_rate(ood, both) > refusal_rate(ood, cosine_only)
    assert refusal_rate(answerable, both) <= 0.05


def test_measure_fits_the_lexical_variant_for_cosine_only_and_checks_targets() -> None:
    answerable = [scored(True, v / 100) for v in range(40, 100)]
    ood = [scored(False, v / 100, lexical=0.0) for v in range(10, 60)]
    targets = Targets(max_answerable=0.05, min_ood=0.9, margin=0.01)
    cosine = measure("cosine", answerable, ood, Cut(0.3), targets)
    assert cosine.questions == QuestionCounts(60, 50)
    assert cosine.configured.answerable_refused == 0.0 and cosine.configured.ood_refused == 0.4
    assert cosine.calibrated is not None and cosine.calibrated_with_lexical is not None
    # Lexical coverage separates the sets completely: every out-of-domain question refused, no answerable one.
    assert cosine.calibrated_with_lexical.ood_refused == 1.0 and cosine.calibrated_with_lexical.meets_targets
    assert not cosine.calibrated.meets_targets  # cosine alone overlaps between 0.40 and 0.59
    assert len(cosine.calibrated.held_out_folds) == 2
    lexical = measure("lexical", answerable, ood, Cut(0.3), targets)
    assert lexical.calibrated is not None and lexical.calibrated_with_lexical is None
    report = RefusalReport("kb", "qa.jsonl", "ood.jsonl", 60, 50, targets, {"cosine": cosine})
    assert "cosine calibrated_with_lexical" in report.text() and "(misses a target)" in report.text()


def test_packaged_out_of_domain_questions_match_the_questions_language() -> None:
    en, zh = packaged_ood("en"), packaged_ood("zh")
    assert len(en.questions(answerable=False)) == 70 and len(zh.questions(answerable=False)) == 70
    assert en.questions(answerable=True) == []  # every shipped question is out of domain
    assert majority_language(zh.questions(answerable=False)) == "zh"
    assert majority_language(en.questions(answerable=False)) == "en"

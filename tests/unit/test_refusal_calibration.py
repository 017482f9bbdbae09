from __future__ import annotations

from app.cli.eval_refusal import Cut, Scored, calibrate, refusal_rate


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

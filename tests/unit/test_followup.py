"""The follow-up decision, the checks on a model's rewrite and the fusion of the two searches."""

from __future__ import annotations

import pytest

from core.types import ChatMessage, Chunk, ScoredChunk
from retrieval.condense import condense_by_rules, keep_key_terms, usable_rewrite
from retrieval.followup import history_dependence
from retrieval.fusion import Candidates, fuse_candidates

FOLLOW_UPS = [
    ("And what about sick leave?", "continuation"),
    ("What about contractors?", "continuation"),
    ("Do contractors get it too?", "continuation"),
    ("And if I forgot it?", "continuation"),
    ("What happened then?", "continuation"),
    ("When did it end?", "pronoun"),
    ("What year did they win?", "pronoun"),
    ("Who approves that?", "pronoun"),
    ("Is that paid?", "pronoun"),
    ("How big is this project?", "pronoun"),
    ("How long?", "no_subject"),
    ("Why?", "no_subject"),
    ("How many people died?", "no_subject"),
    ("那病假呢？", "continuation"),
    ("那么合同工呢？", "continuation"),
    ("还有哪些类别？", "continuation"),
    ("病假呢？", "continuation"),
    ("它的预算是多少？", "pronoun"),
    ("需要谁审批？", "no_subject"),
    ("超过了怎么办？", "no_subject"),
    ("该项目的预算是多少？", "pronoun"),
    ("他们是什么时候成立的？", "pronoun"),
    ("这个项目花了多少钱？", "pronoun"),
    ("持续了多久？", "no_subject"),
    ("花了多少钱？", "no_subject"),
    ("什么时候成立的？", "no_subject"),
    ("为什么会发生？", "no_subject"),
]

SELF_CONTAINED = [
    "How many days of annual leave do new employees get?",
    "Can unused leave be carried over?",
    "How do I reset a forgotten VPN password?",
    "What is photosynthesis?",
    "Is there a limit on travel costs?",
    "How many chloroplast lineages are there?",
    "Which benefits apply to employees that work part-time?",
    "How old was Peyton Manning when he played in Super Bowl 50?",
    "Who registered the most sacks on the team this season?",
    "Besides the North Sea and the Irish Channel, what else was lowered in the last cold phase?",
    "报销需要在多少天内提交？",
    "新员工有多少天年假？",
    "谁发明了蒸汽机？",
    "光合作用在哪里进行？",
    "年假可以结转吗？",
    "VPN密码忘了怎么办？",
    "还款需要多久？",
    "特斯拉是如何资助他的工作的？",
    "还有哪位欧洲新教领袖曾在巴黎大学深造？",
    "为什么天空是蓝色的呢？",
]


@pytest.mark.parametrize(("question", "reason"), FOLLOW_UPS)
def test_a_follow_up_is_judged_to_depend_on_the_history(question: str, reason: str) -> None:
    dependence = history_dependence(question)
    assert dependence.depends and dependence.reason == reason


@pytest.mark.parametrize("question", SELF_CONTAINED)
def test_a_question_with_its_own_subject_is_searched_as_asked(question: str) -> None:
    assert history_dependence(question).depends is False


HISTORY = [
    ChatMessage(role="user", content="How many days of annual leave do new employees get?"),
    ChatMessage(role="assistant", content="New employees get 15 days [1]."),
]


def test_rules_without_a_model_keep_a_self_contained_question_and_widen_a_follow_up() -> None:
    alone = condense_by_rules("报销需要在多少天内提交？", HISTORY)
    assert alone.query == "报销需要在多少天内提交？" and not alone.condensed
    follow = condense_by_rules("And what about sick leave?", HISTORY)
    assert follow.condensed and follow.method == "fallback" and follow.reason == "continuation"
    assert follow.query == f"{HISTORY[0].content}\nAnd what about sick leave?"
    assert not condense_by_rules("And what about sick leave?", []).condensed


@pytest.mark.parametrize(
    ("question", "rewrite"),
    [
        ("And what about sick leave?", ""),
        # Another language than the question's: the Chinese question must not be searched in English.
        ("它的预算是多少？", "What is the budget of the Apollo program?"),
        ("那病假呢？", "新员工有多少天病假" * 40),
    ],
)
def test_an_unusable_rewrite_is_discarded(question: str, rewrite: str) -> None:
    assert usable_rewrite(question, rewrite) is None


def test_a_rewrite_gets_back_the_question_terms_it_dropped_but_not_its_pronouns() -> None:
    assert keep_key_terms("And what about sick leave?", "How many days of annual leave do new employees get?") == (
        "How many days of annual leave do new employees get? sick"
    )
    assert keep_key_terms("那病假呢？", "新员工有多少天年假") == "新员工有多少天年假病假"
    assert keep_key_terms("它的预算是多少？", "阿波罗计划的预算是多少") == "阿波罗计划的预算是多少"
    assert usable_rewrite("它的预算是多少？", "阿波罗计划的预算是多少？") == "阿波罗计划的预算是多少？"


def _hit(chunk_id: str, score: float, kind: str = "rerank") -> ScoredChunk:
    chunk = Chunk(chunk_id=chunk_id, doc_id=chunk_id, version=1, text=chunk_id, title=chunk_id, source=chunk_id)
    return ScoredChunk(chunk=chunk, score=score, score_kind=kind)  # type: ignore[arg-type]


def _ranking(*hits: ScoredChunk, timings: dict[str, float] | None = None) -> Candidates:
    return Candidates("en", "hybrid", list(hits), None, timings or {"embed_ms": 1.0}, reranked=True)


def test_fusion_ranks_what_both_searches_find_first_and_the_first_ranking_wins_ties() -> None:
    rewrite = _ranking(_hit("a", 0.9), _hit("b", 0.5), _hit("c", 0.4))
    asked = _ranking(_hit("d", 0.8), _hit("b", 0.7), _hit("e", 0.1))
    fused = fuse_candidates([rewrite, asked])
    assert [h.chunk.chunk_id for h in fused.hits] == ["b", "a", "d", "c", "e"]
    # The best score of its kind survives, and the stages' durations add up.
    assert fused.hits[0].score == 0.7 and fused.timings == {"embed_ms": 2.0} and fused.reranked


def test_fusion_keeps_a_hit_only_one_search_found() -> None:
    fused = fuse_candidates([_ranking(_hit("a", 0.9)), _ranking(_hit("z", 0.3))])
    assert [h.chunk.chunk_id for h in fused.hits] == ["a", "z"]

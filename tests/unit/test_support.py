"""Support scores on hand-written cases, English and Chinese: a supported sentence, a sentence citing the
wrong passage, a sentence of titles and markers only, and a number that differs from the source's.

Each case runs with the fake embedder (hashed words: the lexical measure plus a crude cosine) and with the
real all-MiniLM-L6-v2 (integration), at the configured thresholds. MiniLM does not understand Chinese, so
Chinese sentences are scored by the lexical measure alone in both runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.protocols import Embedder
from core.types import SentenceGrounding
from serving.citations import check_citations
from serving.support import Passage, Reading, chinese_number, content_terms, passage_sentences
from tests.fakes import FakeEmbedder
from tests.support_scorer import support_scorer

LEAVE = (
    "New employees get 15 days of paid annual leave in their first year of employment. "
    "Up to 5 unused days may be carried over into the next calendar year. "
    "Carried-over days expire if they are not taken by March 31."
)
VPN = "Reset a forgotten VPN password in the self-service portal. The portal is open around the clock."
EXPENSE_ZH = "员工应在费用发生后30天内通过财务系统提交报销申请。单笔金额超过100元的费用必须提供正规发票。"
LEAVE_ZH = "新员工入职第一年享有15天带薪年假。员工每年享有10天带薪病假。"
TITLES = ["Leave Policy", "VPN Guide", "Onboarding Guide for New Hires", "费用报销制度", "休假制度"]


@pytest.fixture(
    scope="module", params=["fake", pytest.param("minilm", marks=pytest.mark.integration)], ids=["fake", "minilm"]
)
def embedder(request: pytest.FixtureRequest) -> Iterator[Embedder]:
    if request.param == "fake":
        yield FakeEmbedder()
    else:
        from retrieval.embedder import SentenceTransformerEmbedder

        yield SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")


@pytest.fixture(scope="module")
def en(embedder: Embedder) -> Reading:
    return support_scorer(embedder).read([Passage(1, LEAVE), Passage(2, VPN)], ignore=TITLES)


@pytest.fixture(scope="module")
def zh(embedder: Embedder) -> Reading:
    return support_scorer(embedder).read([Passage(1, EXPENSE_ZH), Passage(2, LEAVE_ZH)], ignore=TITLES)


def grounded(reading: Reading, answer: str, n_sources: int = 2) -> list[tuple[bool, float]]:
    check = check_citations(answer, n_sources)
    return [(s.grounded, s.support) for s in reading.ground(check.sentences)]


# -- English -----------------------------------------------------------------------------------------------


def test_en_a_supported_sentence_is_grounded(en: Reading) -> None:
    [(ok, support)] = grounded(en, "New employees get 15 days of paid annual leave [1].")
    assert ok and support >= 0.8
    # A paraphrase with the same facts still counts.
    [(ok, _)] = grounded(en, "Unused days, up to 5, can be carried over into the next year [1].")
    assert ok


def test_en_a_sentence_citing_the_wrong_passage_is_not_grounded(en: Reading) -> None:
    [(ok, support)] = grounded(en, "New employees get 15 days of paid annual leave [2].")
    assert not ok and support == 0.0  # 15 is not in the VPN passage
    [(ok, support)] = grounded(en, "Reset a forgotten VPN password in the self-service portal [1].")
    assert not ok and support < 0.3


def test_en_titles_and_markers_are_not_an_answer(en: Reading) -> None:
    # What SmolLM2 wrote under the citation guard (issue 16): titles, colons and markers.
    check = check_citations("1. [1] Leave Policy: [2] Onboarding Guide for New Hires: [1]", 2)
    sentences = en.ground(check.sentences)
    assert sentences and all(not s.grounded and s.support == 0.0 for s in sentences)
    [(ok, support)] = grounded(en, "Sources: [1] [2].")
    assert not ok and support == 0.0


def test_en_a_number_the_passage_does_not_state_is_unsupported(en: Reading) -> None:
    [(ok, support)] = grounded(en, "New employees get 20 days of paid annual leave in their first year [1].")
    assert not ok and support == 0.0
    [(ok, _)] = grounded(en, "Carried-over days expire if they are not taken by March 30 [1].")
    assert not ok


# -- Chinese -----------------------------------------------------------------------------------------------


def test_zh_a_supported_sentence_is_grounded(zh: Reading) -> None:
    [(ok, support)] = grounded(zh, "报销申请须在费用发生后30天内提交[1]。")
    assert ok and support >= 0.8
    # 十五 is 15.
    [(ok, _)] = grounded(zh, "新员工入职第一年享有十五天带薪年假[2]。")
    assert ok


def test_zh_a_sentence_citing_the_wrong_passage_is_not_grounded(zh: Reading) -> None:
    [(ok, support)] = grounded(zh, "报销申请须在费用发生后30天内提交[2]。")
    assert not ok and support == 0.0
    [(ok, support)] = grounded(zh, "费用必须提供正规发票[2]。")
    assert not ok and support < 0.3


def test_zh_titles_and_markers_are_not_an_answer(zh: Reading) -> None:
    # What SmolLM2 wrote for the Chinese demo question (issue 16).
    check = check_citations("资料：[1] 费用报销制度 [2] 费用报销制度 [3]", 3)
    sentences = zh.ground(check.sentences)
    assert sentences and all(not s.grounded and s.support == 0.0 for s in sentences)


def test_zh_a_number_the_passage_does_not_state_is_unsupported(zh: Reading) -> None:
    [(ok, support)] = grounded(zh, "报销申请须在费用发生后60天内提交[1]。")
    assert not ok and support == 0.0
    [(ok, support)] = grounded(zh, "新员工入职第一年享有二十天带薪年假[2]。")
    assert not ok and support == 0.0


# -- what the scores are made of -------------------------------------------------------------------------


def test_a_sentence_that_cites_nothing_is_not_grounded(en: Reading) -> None:
    [sentence] = en.ground([SentenceGrounding(text="New employees get 15 days of paid annual leave.")])
    assert not sentence.grounded and sentence.support == 0.0


def test_numbers_and_names_weigh_most() -> None:
    terms = content_terms("New employees get 15 days of leave from March 31 at Northwind [1].")
    assert terms.weights["#15"] > terms.weights["northwind"] > terms.weights["leave"]
    assert "[1]" not in "".join(terms.weights) and "#1" not in terms.weights
    assert content_terms("报销须在三十天内提交").weights["#30"] == terms.weights["#15"]
    assert content_terms("[1] Leave Policy: [2]", ignore=["Leave Policy"]).total == 0


def test_chinese_numerals() -> None:
    numerals = ["十五", "二十四", "三百", "两万", "一千零五", "十"]
    assert [chinese_number(t) for t in numerals] == [15, 24, 300, 20000, 1005, 10]
    assert chinese_number("年假") is None


def test_passage_sentences_carry_offsets_into_the_passage() -> None:
    text = "Annual leave\nDr. Smith joined the U.S. office in 1990. He stayed!\n中文第一句。第二句？"
    spans = passage_sentences(text, headings=["Leave Policy > Annual leave"])
    expected = ["Dr. Smith joined the U.S. office in 1990.", "He stayed!", "中文第一句。", "第二句？"]
    assert [s.text for s in spans] == expected
    assert all(text[s.start : s.end] == s.text for s in spans)


def test_extraction_quotes_the_sentence_that_answers(en: Reading, zh: Reading) -> None:
    [best, *_] = en.extract("How many days of annual leave do new employees get?", limit=3)
    assert (best.index, best.span.text) == (1, LEAVE.split(". ", maxsplit=1)[0] + ".")
    [best, *_] = zh.extract("报销需要在多少天内提交？", limit=3)
    assert best.index == 1 and "30天内" in best.span.text


def test_evidence_is_the_sentence_that_supports_the_claim(en: Reading) -> None:
    [span] = en.evidence(1, ["Unused days can be carried over [1]."], "How much leave?")
    assert span.text.startswith("Up to 5 unused days") and LEAVE[span.start : span.end] == span.text
    # A source nothing cites: the sentence that best answers the question.
    [span] = en.evidence(2, [], "Where do I reset my VPN password?")
    assert span.text.startswith("Reset a forgotten VPN password")

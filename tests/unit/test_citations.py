from __future__ import annotations

import re

from serving.citations import check_citations, citation_pattern


def test_valid_markers_are_kept_and_invalid_ones_removed() -> None:
    check = check_citations("Leave is 15 days [2]. Carry over 5 days [7][1]. Ask HR [0].", n_sources=3)
    assert check.cited == [2, 1]
    assert check.invalid == [7, 0]
    assert "[7]" not in check.text and "[0]" not in check.text
    assert "15 days [2]." in check.text
    assert check.uncited_sentences == ["Ask HR."]
    assert not check.grounded


def test_grouped_and_chinese_markers() -> None:
    check = check_citations("新员工有15天年假【1】。报销须在30天内提交[2，3]。", n_sources=3)
    assert check.cited == [1, 2, 3]
    assert check.grounded
    assert "[1]" in check.text and "[2][3]" in check.text


def test_no_markers_means_not_grounded() -> None:
    check = check_citations("New employees get 15 days of leave.", n_sources=2)
    assert check.cited == [] and not check.grounded


def test_citation_pattern_accepts_cited_sentences_and_the_refusal_only() -> None:
    pattern = re.compile(citation_pattern(3, "Not found in the knowledge base.", "en"))
    assert pattern.fullmatch("New employees get 15 days [1].")
    assert pattern.fullmatch("Leave is 15 days [1]. Sick leave is 10 days [2].")
    assert pattern.fullmatch("Not found in the knowledge base.")
    assert not pattern.fullmatch("New employees get 15 days.")
    assert not pattern.fullmatch("New employees get 15 days [4].")
    zh = re.compile(citation_pattern(2, "知识库中没有找到相关内容。", "zh"))
    assert zh.fullmatch("报销须在30天内提交[1]。")
    assert not zh.fullmatch("报销须在30天内提交[3]。")


def test_each_sentence_reports_what_it_cites() -> None:
    check = check_citations("Leave is 15 days [1][9]. Staff may carry over five days. Ask HR first. [2]", n_sources=2)
    assert [(s.text, s.citations, s.grounded) for s in check.sentences] == [
        ("Leave is 15 days [1].", [1], True),
        ("Staff may carry over five days.", [], False),
        ("Ask HR first. [2]", [2], True),
    ]
    assert check.invalid == [9]
    assert not check.grounded


def test_chinese_sentences_are_checked_one_by_one() -> None:
    check = check_citations("新员工有十五天年假[1]。病假需要医生证明。", n_sources=1)
    assert [s.grounded for s in check.sentences] == [True, False]


def test_the_chat_ui_flags_sentences_that_cite_nothing() -> None:
    from ui.render import answer_html

    check = check_citations("Leave is 15 days [1]. Staff may carry over five days.", n_sources=1)
    shown = answer_html(check.text, [s.model_dump() for s in check.sentences], "en")
    assert 'class="kb-uncited"' in shown and ">Staff may carry over five days.</span>" in shown
    assert "Leave is 15 days [1]." in shown.split('<span class="kb-uncited"')[0]

"""The web app's pieces without a browser: escaping and highlighting, labels, the HTTP client, tickets."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from ui.client import ApiError, KbClient, Unreachable
from ui.downloads import Tickets
from ui.i18n import LABELS, language_of, t
from ui.render import (
    answer_html,
    assistant_message,
    evidence_html,
    highlight,
    job_progress,
    question_terms,
    source_cards,
)

XSS = "<img src=x onerror=alert(1)>"


def test_document_text_is_escaped_everywhere() -> None:
    source = {"index": 1, "doc_id": 'a"/b.md', "title": XSS, "page": 2, "snippet": "<script>alert(1)</script> leave"}
    shown = assistant_message(
        answer=f"Leave {XSS} [1].", sentences=[{"text": f"Leave {XSS} [1].", "grounded": True}], sources=[source],
        cited=[1], question="leave", refused=False, degraded=False, message="", lang="en",
        link=lambda s: "files?t=abc",
    )  # fmt: skip
    assert "<img" not in shown and "<script" not in shown
    assert "&lt;img src=x onerror=alert(1)&gt;" in shown and 'data-doc-id="a&quot;/b.md"' in shown
    assert 'href="files?t=abc"' in shown


def test_highlight_marks_question_words_without_breaking_entities() -> None:
    assert highlight("Annual leave & amp; AMP", "annual amp?") == (
        "<mark>Annual</mark> leave &amp; <mark>amp</mark>; <mark>AMP</mark>"
    )
    assert question_terms("How many days of annual leave do new employees get?") == ["employees", "annual", "leave",
                                                                                      "days"]  # fmt: skip
    assert highlight("新员工有十五天年假。", "新员工有几天年假？") == "<mark>新员工</mark>有十五<mark>天年假</mark>。"
    assert highlight("", "leave") == ""
    assert highlight("It observes and serves.", "serve") == "It observes and <mark>serve</mark>s."


def test_uncited_sentences_are_marked_and_line_breaks_kept() -> None:
    answer = "Leave is 15 days [1].\n- Carry over five days.\n- Ask HR. [1]"
    sentences = [
        {"text": "Leave is 15 days [1].", "grounded": True},
        {"text": "- Carry over five days.", "grounded": False},
        {"text": "- Ask HR. [1]", "grounded": True},
    ]
    shown = answer_html(answer, sentences, "zh")
    assert shown.startswith('Leave is 15 days [1].\n<span class="kb-uncited"')
    assert "- Ask HR. [1]" in shown and t("zh", "chat.uncited_legend") in shown


def test_badges_for_refusals_and_degraded_answers() -> None:
    common = {"sentences": [], "sources": [], "cited": [], "question": "q", "message": "model down", "lang": "en"}
    refused = assistant_message(answer="Not found.", refused=True, degraded=False, **common)  # type: ignore[arg-type]
    assert "kb-badge-refused" in refused and "Not in the documents" in refused
    degraded = assistant_message(answer="[1] x", refused=False, degraded=True, **common)  # type: ignore[arg-type]
    assert "kb-badge-degraded" in degraded and "model down" in degraded


def test_a_sentence_whose_source_does_not_support_it_is_marked_as_such() -> None:
    answer = "Leave is 20 days [1]. Ask HR."
    sentences = [{"text": "Leave is 20 days [1].", "citations": [1], "grounded": False},
                 {"text": "Ask HR.", "citations": [], "grounded": False}]  # fmt: skip
    shown = answer_html(answer, sentences, "en")
    assert f'title="{t("en", "chat.unsupported")}">Leave is 20 days [1].</span>' in shown
    assert f'title="{t("en", "chat.uncited")}">Ask HR.</span>' in shown


def test_extractive_answers_show_their_quotes_with_a_badge_also_when_the_model_is_down() -> None:
    common = {"sentences": [], "sources": [], "cited": [1], "question": "q", "message": "model down", "lang": "zh"}
    quoted = "新员工享有15天带薪年假。[1]"
    extractive = assistant_message(answer=quoted, refused=False, degraded=False, extractive=True, **common)  # type: ignore[arg-type]
    assert "kb-badge-extractive" in extractive and t("zh", "chat.extractive") in extractive and quoted in extractive
    degraded = assistant_message(answer=quoted, refused=False, degraded=True, extractive=True, **common)  # type: ignore[arg-type]
    assert "kb-badge-degraded" in degraded and "kb-badge-extractive" not in degraded and quoted in degraded
    assert "model down" not in degraded


def test_a_cited_card_shows_its_evidence_marked_in_context() -> None:
    text = "Intro line. " * 30 + "New employees get 15 days of <paid> leave. " + "Tail text. " * 30
    start = text.index("New employees")
    end = start + len("New employees get 15 days of <paid> leave.")
    source = {"index": 1, "doc_id": "d", "title": "Leave", "snippet": text[:80], "text": text,
              "evidence": [{"text": text[start:end], "start": start, "end": end}]}  # fmt: skip
    shown = evidence_html(source, "leave days")
    assert shown is not None and shown.startswith("…") and shown.endswith("…")
    assert '<mark class="kb-evidence">New employees get 15 days of &lt;paid&gt; leave.</mark>' in shown
    assert len(shown) < len(text)
    card = source_cards([source], cited=[1], question="leave", lang="en")
    assert "kb-evidence" in card
    # A source that is only consulted shows its opening lines; offsets that do not match the text are ignored.
    assert "kb-evidence" not in source_cards([source], cited=[], question="leave", lang="en")
    forged = {**source, "evidence": [{"text": "<b>x</b>", "start": 0, "end": 8}]}
    assert evidence_html(forged, "leave") is None


def test_cards_put_cited_sources_first() -> None:
    sources = [{"index": i, "doc_id": f"d{i}", "title": f"T{i}", "snippet": ""} for i in (1, 2, 3)]
    shown = source_cards(sources, cited=[3], question="", lang="en")
    assert shown.index("T3") < shown.index("T1") < shown.index("T2")


def test_job_progress_lists_failed_files() -> None:
    job = {"job_id": "j1", "state": "failed", "stage": "done", "files_total": 2, "files_done": 1, "files_failed": 1,
           "items": [{"file": "<b>.pdf", "status": "failed", "error": "not a PDF", "error_code": "bad"}]}  # fmt: skip
    shown = job_progress(job, "en")
    assert "&lt;b&gt;.pdf" in shown and "not a PDF" in shown and 'data-state="failed"' in shown


def test_labels_exist_in_both_languages_and_browser_language_is_followed() -> None:
    assert LABELS["en"].keys() == LABELS["zh"].keys()
    assert language_of("zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert language_of("fr-FR,en;q=0.5,zh;q=0.4") == "en"
    assert language_of("de;q=0.9, zh-TW;q=0.95") == "zh"
    assert language_of(None) == "en"


def _client(handler: httpx.MockTransport, key: str = "k") -> KbClient:
    return KbClient("http://kb", key, transport=handler)


def test_client_sends_the_key_and_encodes_document_ids() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": []})

    asyncio.run(_client(httpx.MockTransport(handle), "secret").versions("folder/a b.md", kb="hr"))
    assert seen[0].headers["authorization"] == "Bearer secret"
    assert seen[0].url.raw_path == b"/documents/folder%2Fa%20b.md/versions?kb=hr"


def test_client_reads_the_api_error_shape_and_network_failures() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "bad key", "request_id": "r"}})

    with pytest.raises(ApiError) as caught:
        asyncio.run(_client(httpx.MockTransport(refuse)).me())
    assert (caught.value.status, caught.value.code, caught.value.message) == (401, "unauthorized", "bad key")

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(Unreachable):
        asyncio.run(_client(httpx.MockTransport(down)).me())


def test_client_streams_answer_events() -> None:
    body = "".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n"
        for name, data in [("token", {"text": "Hi"}), ("citations", {"answer": "Hi"}), ("done", {"answer_id": "a"})]
    )

    def handle(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async def collect() -> list[tuple[str, dict[str, object]]]:
        return [e async for e in _client(httpx.MockTransport(handle)).ask_stream("q", kb="default")]

    assert [name for name, _ in asyncio.run(collect())] == ["token", "citations", "done"]


def test_tickets_expire_and_end_with_the_session() -> None:
    tickets = Tickets(ttl_s=0.2)
    mine, other = tickets.issue("k1", "default", "a.md"), tickets.issue("k2", "default", "b.md")
    assert mine != other and len(mine) >= 32
    grant = tickets.redeem(mine)
    assert grant is not None and (grant.key, grant.doc_id) == ("k1", "a.md")
    assert tickets.redeem("guess") is None
    tickets.forget_key("k1")
    assert tickets.redeem(mine) is None and tickets.redeem(other) is not None
    time.sleep(0.25)
    assert tickets.redeem(other) is None

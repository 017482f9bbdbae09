"""AnswerService.ask/.stream and QueryPipeline on the in-memory fakes (tests/fakes): no vLLM, no Milvus,
no models. The fakes pass the same contract suites as the real components (tests/contracts).

Where an answer cites sources, the fake model reads the numbered sources in the prompt it was sent and
cites the one holding a given fact, as a model would; the assertions then name the document that holds
the fact, so they do not depend on how kb numbers its sources."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from app.answers.service import AnswerService, Question
from core.types import Access, Answer, AnswerMode, ChatMessage, Chunk, RelevanceThresholds, ScoredChunk
from retrieval.condense import Condenser
from retrieval.pipeline import QueryPipeline
from serving.prompts import PromptBook
from tests.conftest import ALL, EVERYTHING
from tests.fakes import FakeEmbedder, FakeGenerator, FakeReranker, FakeVectorStore
from tests.fakes.generator import Failure, Reply
from tests.support_scorer import support_scorer

REFUSAL_EN = "Not found in the knowledge base."
REFUSAL_ZH = "知识库中没有找到相关内容。"
SYSTEM_EN = "You are the company knowledge base assistant"
SYSTEM_ZH = "你是公司知识库助手"

LEAVE = "New employees get 20 days of paid annual leave per year."
CARRY = "Unused annual leave can be carried over until March."
VPN = "Reset a forgotten VPN password in the self-service portal."
SALARY = "Salary bands for engineers range from 60000 to 90000 euros."
EXPENSE_ZH = "报销单必须在30天内提交，并附上发票。"
PARKING_V1 = "Parking permits cost 30 euros per month at the main office."
PARKING_V2 = "Parking permits cost 45 euros per month at the main office."

# doc_id, version, ordinal, title, acl_groups, text
CORPUS = [
    ("leave-policy.md", 1, 0, "Leave Policy", ["public"], LEAVE),
    ("leave-policy.md", 1, 1, "Leave Policy", ["public"], CARRY),
    ("vpn-guide.md", 1, 0, "VPN Guide", ["public"], VPN),
    ("salary-bands.md", 1, 0, "Salary Bands", ["hr"], SALARY),
    ("expense-policy-zh.md", 1, 0, "报销政策", ["public"], EXPENSE_ZH),
    ("parking.md", 1, 0, "Parking", ["public"], PARKING_V1),
    ("parking.md", 2, 0, "Parking", ["public"], PARKING_V2),
]


@dataclass
class Kb:
    service: AnswerService
    generator: FakeGenerator
    store: FakeVectorStore
    embedder: FakeEmbedder


def make_kb(
    *replies: Reply, fail: Failure = "never", fail_after: int = 1, citation_guard: bool = True,
    thresholds: RelevanceThresholds | None = None, hidden: Sequence[tuple[str, int]] = (("parking.md", 1),),
    condense: bool = False, corpus: bool = True, top_k: int = 3, mode: AnswerMode = "generative",
    followup_gain: float = 0.0,
) -> Kb:  # fmt: skip
    embedder = FakeEmbedder()
    store = FakeVectorStore(dimension=embedder.dimension)
    if corpus:
        chunks = [
            Chunk(chunk_id=Chunk.make_id(d, v, o), doc_id=d, version=v, ordinal=o, title=t, source=f"/docs/{d}",
                  page=1, acl_groups=a, text=text)
            for d, v, o, t, a, text in CORPUS
        ]  # fmt: skip
        store.upsert("default", chunks, embedder.embed([c.text for c in chunks], "passage"))
    generator = FakeGenerator(*replies, fail=fail, fail_after=fail_after)
    query = QueryPipeline(
        embedder=embedder, store=store, candidates=10, thresholds=thresholds or RelevanceThresholds.off(),
        hidden_versions=lambda kb: list(hidden),
    )  # fmt: skip
    condenser = Condenser(generator, PromptBook().template("condense.j2")) if condense else None
    service = AnswerService(
        query=query, generator=generator, prompts=PromptBook(), top_k=top_k, citation_guard=citation_guard,
        support=support_scorer(embedder), answer_mode=mode, condenser=condenser, followup_gain=followup_gain,
    )  # fmt: skip
    return Kb(service, generator, store, embedder)


def prompt_sources(messages: Sequence[ChatMessage]) -> dict[int, str]:
    """The numbered sources of the prompt, as the model sees them: {n: text under the "[n] title" line}."""
    user = messages[-1].content
    blocks = re.findall(r"^\[(\d+)\] [^\n]*\n(.*?)(?=^\[\d+\] |^Question:|^问题：|\Z)", user, re.M | re.S)
    return {int(n): text.strip() for n, text in blocks}


def cite(*facts: tuple[str, str], end: str = ".") -> Callable[[Sequence[ChatMessage]], str]:
    """A model that writes one sentence per (sentence, fact) and cites the source holding that fact."""

    def reply(messages: Sequence[ChatMessage]) -> str:
        sources = prompt_sources(messages)
        out = []
        for sentence, fact in facts:
            numbers = [n for n, text in sources.items() if fact in text]
            assert numbers, f"{fact!r} is not among the sources the model was shown: {sources}"
            out.append(f"{sentence} [{numbers[0]}]{end}")
        return " ".join(out) if end == "." else "".join(out)

    return reply


def ask(kb: Kb, question: Question) -> Answer:
    return asyncio.run(kb.service.ask(question))


def stream(kb: Kb, question: Question) -> list[tuple[str, dict[str, object]]]:
    async def run() -> list[tuple[str, dict[str, object]]]:
        return [(e.name, e.data) for e in [event async for event in kb.service.stream(question)]]

    return asyncio.run(run())


def names(events: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [name for name, _ in events]


def payload(events: list[tuple[str, dict[str, object]]], name: str) -> dict[str, object]:
    (data,) = [d for n, d in events if n == name]
    return data


def docs(items: object) -> list[str]:
    assert isinstance(items, list)
    return [str(item["doc_id"]) for item in items]


# -- citations ---------------------------------------------------------------------------------------------


def test_citations_are_the_sources_the_model_cited() -> None:
    reply = cite(("Reset it in the self-service portal", VPN), ("New staff get 20 days", LEAVE))
    kb = make_kb(reply)
    answer = ask(
        kb, Question(access=ALL, text="How do I reset my VPN password, and how much annual leave do new staff get?")
    )
    assert not answer.refused and not answer.degraded and answer.grounded
    assert {c.doc_id for c in answer.citations} == {"vpn-guide.md", "leave-policy.md"}
    call = kb.generator.calls[0]
    shown = prompt_sources(call.messages)
    for citation in answer.citations:
        assert citation.snippet in shown[citation.index]
        assert f"[{citation.index}]" in answer.answer
    by_doc = {c.doc_id: c for c in answer.citations}
    assert (by_doc["vpn-guide.md"].snippet, by_doc["vpn-guide.md"].title) == (VPN, "VPN Guide")
    assert LEAVE in by_doc["leave-policy.md"].snippet and by_doc["leave-policy.md"].source == "/docs/leave-policy.md"
    # Sentences in the order written, each citing the source of its own fact.
    assert [s.grounded for s in answer.sentences] == [True, True]
    cited_facts = [
        [fact in shown[n] for n in s.citations] for s, fact in zip(answer.sentences, [VPN, LEAVE], strict=True)
    ]
    assert cited_facts == [[True], [True]]
    assert answer.usage == FakeGenerator.usage(call.messages, kb.generator.pieces(reply(call.messages)))


def test_every_source_the_model_was_shown_is_listed_citations_in_source_order() -> None:
    kb = make_kb(cite(("Leave carries over", CARRY), ("Reset it in the portal", VPN)))
    answer = ask(
        kb, Question(access=ALL, text="Can unused annual leave be carried over, and where do I reset my VPN password?")
    )
    shown = prompt_sources(kb.generator.calls[0].messages)
    assert [s.index for s in answer.sources] == list(range(1, len(shown) + 1))
    assert [s.snippet for s in answer.sources] == [shown[n] for n in sorted(shown)]
    assert [c.index for c in answer.citations] == sorted(c.index for c in answer.citations)
    assert {c.doc_id for c in answer.citations} == {"leave-policy.md", "vpn-guide.md"}


def test_invalid_markers_are_removed_and_leave_their_sentence_ungrounded() -> None:
    # Without the citation guard (servers with no structured outputs) the model may cite sources that
    # do not exist.
    kb = make_kb("New employees get 20 days of leave [1][9]. Meals are free [0].", citation_guard=False)
    question = Question(access=ALL, text="How many days of annual leave do new employees get?")
    answer = ask(kb, question)
    assert kb.generator.calls[0].pattern is None
    assert answer.answer == "New employees get 20 days of leave [1]. Meals are free."
    assert [c.index for c in answer.citations] == [1]
    assert [s.grounded for s in answer.sentences] == [True, False] and not answer.grounded

    events = stream(kb, question)
    streamed = "".join(str(d["text"]) for n, d in events if n == "token")
    assert "[9]" in streamed and "[0]" in streamed  # tokens go out as the model writes them
    citations = payload(events, "citations")
    assert citations["answer"] == answer.answer  # the verified text follows them
    assert [c["index"] for c in citations["citations"]] == [1]  # type: ignore[attr-defined]


def test_the_citation_guard_sends_a_pattern_that_allows_only_real_sources() -> None:
    kb = make_kb(cite(("New staff get 20 days", LEAVE)))
    answer = ask(kb, Question(access=ALL, text="How many days of annual leave do new employees get?"))
    pattern = kb.generator.calls[0].pattern
    assert pattern is not None
    n = len(answer.sources)
    assert re.fullmatch(pattern, f"Twenty days [{n}].") and not re.fullmatch(pattern, f"Twenty days [{n + 1}].")
    assert re.fullmatch(pattern, REFUSAL_EN) and not re.fullmatch(pattern, "Twenty days.")


def test_the_model_refusing_is_a_refusal_with_no_citations() -> None:
    kb = make_kb(REFUSAL_EN)
    answer = ask(kb, Question(access=ALL, text="How many days of annual leave do new employees get?"))
    assert len(kb.generator.calls) == 1
    assert answer.refused and answer.answer == REFUSAL_EN and answer.citations == [] and not answer.grounded
    assert answer.sources  # what the model was shown is still there for an admin to inspect


# -- answers that carry the fact: support, evidence, extractive answers --------------------------------

LEAVE_QUESTION = "How many days of annual leave do new employees get?"
# What SmolLM2 wrote under the citation guard (issue 16): titles and markers, no fact.
TITLES_ONLY = "1. [1] Leave Policy: [2] VPN Guide: [1]"


def test_generative_mode_keeps_a_titles_only_answer_but_grounds_none_of_it() -> None:
    kb = make_kb(TITLES_ONLY)
    answer = ask(kb, Question(access=ALL, text=LEAVE_QUESTION))
    assert answer.answer == TITLES_ONLY and not answer.extractive
    assert answer.sentences and all(not s.grounded and s.support == 0.0 for s in answer.sentences)
    assert not answer.grounded


def test_auto_mode_quotes_the_sources_when_the_model_states_nothing_they_support() -> None:
    kb = make_kb(TITLES_ONLY, mode="auto")
    answer = ask(kb, Question(access=ALL, text=LEAVE_QUESTION))
    assert len(kb.generator.calls) == 1
    assert answer.extractive and not answer.degraded and not answer.refused and answer.grounded
    assert answer.answer.splitlines()[0] == "New employees get 20 days of paid annual leave per year [1]."
    assert answer.citations[0].doc_id == "leave-policy.md"
    assert all(s.grounded and s.support >= 0.9 for s in answer.sentences)
    assert answer.usage.completion_tokens > 0  # the model's tokens were spent, and are counted
    (first,) = [c for c in answer.citations if c.index == 1]
    assert LEAVE in [e.text for e in first.evidence]
    assert all(first.text[e.start : e.end] == e.text for e in first.evidence)


def test_auto_mode_keeps_a_supported_answer_and_a_wrong_number_falls_back() -> None:
    kb = make_kb(cite(("New staff get 20 days of leave", LEAVE)), mode="auto")
    kept = ask(kb, Question(access=ALL, text=LEAVE_QUESTION))
    assert not kept.extractive and kept.grounded and kept.answer.startswith("New staff get 20 days of leave [")
    kb = make_kb(cite(("New staff get 25 days of leave", LEAVE)), mode="auto")
    replaced = ask(kb, Question(access=ALL, text=LEAVE_QUESTION))
    assert replaced.extractive and "20 days" in replaced.answer and "25" not in replaced.answer


def test_auto_mode_streams_the_model_then_sends_the_extractive_text_in_citations() -> None:
    kb = make_kb(TITLES_ONLY, mode="auto")
    events = stream(kb, Question(access=ALL, text=LEAVE_QUESTION))
    streamed = "".join(str(d["text"]) for n, d in events if n == "token")
    assert streamed == TITLES_ONLY  # what the model wrote went out as it came
    citations, done = payload(events, "citations"), payload(events, "done")
    assert citations["extractive"] is True and done["extractive"] is True and done["degraded"] is False
    assert str(citations["answer"]).startswith("New employees get 20 days of paid annual leave per year [1].")
    assert docs(citations["citations"])[0] == "leave-policy.md"


def test_extractive_mode_answers_without_the_model() -> None:
    kb = make_kb("unused", mode="extractive")
    answer = ask(kb, Question(access=ALL, text=LEAVE_QUESTION))
    events = stream(kb, Question(access=ALL, text=LEAVE_QUESTION))
    assert kb.generator.calls == []
    assert answer.extractive and answer.usage.completion_tokens == 0 and "generate_ms" not in answer.timings
    assert "20 days of paid annual leave" in answer.answer
    assert names(events) == ["token", "citations", "done"] and events[0][1]["text"] == answer.answer
    zh = ask(kb, Question(access=ALL, text="报销需要在多少天内提交？"))
    assert zh.extractive and zh.answer.startswith("报销单必须在30天内提交，并附上发票[1]。")
    assert [c.doc_id for c in zh.citations] == ["expense-policy-zh.md"]


def test_every_source_carries_evidence_offsets_into_its_text() -> None:
    kb = make_kb(cite(("Unused leave can be carried over until March", CARRY)))
    answer = ask(kb, Question(access=ALL, text="Can unused annual leave be carried over?"))
    (cited,) = answer.citations
    # The passage holds two sentences (neighbouring chunks merged); the evidence is the one the claim rests on.
    assert LEAVE in cited.text and [e.text for e in cited.evidence] == [CARRY]
    for source in answer.sources:
        assert source.snippet.rstrip("…") in source.text
        assert all(source.text[e.start : e.end] == e.text for e in source.evidence)


# -- refusal, degraded answers, failures mid-stream ------------------------------------------------------


@pytest.mark.parametrize("corpus", [True, False], ids=["nothing-relevant", "empty-kb"])
def test_nothing_relevant_is_refused_without_calling_the_model(corpus: bool) -> None:
    kb = make_kb("unused", thresholds=RelevanceThresholds.off(cosine=0.3), corpus=corpus)
    question = Question(access=ALL, text="Photosynthesis in tropical algae")
    answer = ask(kb, question)
    assert answer.refused and answer.answer == REFUSAL_EN and answer.message == "no relevant context found"
    assert answer.sources == [] and answer.citations == [] and answer.usage.completion_tokens == 0
    events = stream(kb, question)
    assert names(events) == ["token", "citations", "done"]
    assert events[0][1] == {"text": REFUSAL_EN}
    assert payload(events, "done")["refused"] is True and payload(events, "citations")["sources"] == []
    assert kb.generator.calls == []


def test_a_relevant_question_passes_the_same_threshold() -> None:
    # The control for the refusal above: the threshold lets a question on the documents through.
    kb = make_kb(cite(("New staff get 20 days", LEAVE)), thresholds=RelevanceThresholds.off(cosine=0.3))
    answer = ask(kb, Question(access=ALL, text="How many days of paid annual leave do new employees get?"))
    assert not answer.refused and len(kb.generator.calls) == 1
    assert [c.doc_id for c in answer.citations] == ["leave-policy.md"]


def test_generator_down_gives_a_degraded_answer_from_the_sources() -> None:
    kb = make_kb(cite(("x", LEAVE)), fail="before")
    answer = ask(kb, Question(access=ALL, text="How many days of annual leave do new employees get?"))
    assert len(kb.generator.calls) == 1
    assert answer.degraded and not answer.refused and "unavailable" in answer.message
    # Still an answer: the sentence of the sources that states the fact, quoted with its citation.
    assert answer.extractive and answer.grounded
    assert answer.answer == "New employees get 20 days of paid annual leave per year [1]."
    assert [c.doc_id for c in answer.citations] == ["leave-policy.md"] and answer.citations[0] in answer.sources
    (evidence,) = answer.citations[0].evidence
    assert answer.citations[0].text[evidence.start : evidence.end] == evidence.text == LEAVE


def test_generator_down_before_the_stream_replays_the_degraded_answer() -> None:
    kb = make_kb(cite(("x", LEAVE)), fail="before")
    events = stream(kb, Question(access=ALL, text="How many days of annual leave do new employees get?"))
    assert names(events) == ["token", "citations", "done"]
    citations, done = payload(events, "citations"), payload(events, "done")
    assert done["degraded"] is True and done["refused"] is False and "unavailable" in str(done["message"])
    assert done["extractive"] is True and citations["extractive"] is True
    assert docs(citations["citations"]) == ["leave-policy.md"] and "leave-policy.md" in docs(citations["sources"])
    assert events[0][1]["text"] == citations["answer"] == "New employees get 20 days of paid annual leave per year [1]."
    assert len(kb.generator.calls) == 1 and kb.generator.calls[0].streamed


def test_generator_dying_mid_stream_ends_with_an_error_event() -> None:
    reply = cite(("New employees get twenty days of leave", LEAVE))
    kb = make_kb(reply, fail="mid_stream", fail_after=2)
    events = stream(kb, Question(access=ALL, text="How many days of annual leave do new employees get?"))
    assert names(events) == ["token", "token", "error"]
    sent = kb.generator.pieces(reply(kb.generator.calls[0].messages))
    assert [d["text"] for n, d in events if n == "token"] == sent[:2]
    error = payload(events, "error")
    assert error["code"] == "llm_unavailable" and "mid-answer" in str(error["message"])


# -- streaming ---------------------------------------------------------------------------------------------


def test_stream_sends_tokens_then_citations_then_done() -> None:
    reply = cite(("New staff get 20 days of leave", LEAVE), ("Unused leave can be carried over until March", CARRY))
    kb = make_kb(reply)
    question = Question(
        access=ALL, text="How many days of annual leave do new employees get, and can it be carried over?"
    )
    events = stream(kb, question)
    call = kb.generator.calls[0]
    sent = reply(call.messages)
    pieces = kb.generator.pieces(sent)
    assert names(events) == ["token"] * len(pieces) + ["citations", "done"]
    assert [d["text"] for n, d in events if n == "token"] == pieces
    citations, done = payload(events, "citations"), payload(events, "done")
    assert citations["answer"] == sent and citations["grounded"] is True
    assert set(docs(citations["citations"])) == {"leave-policy.md"}
    assert done["usage"] == {"prompt_tokens": FakeGenerator.usage(call.messages, pieces).prompt_tokens,
                             "completion_tokens": len(pieces)}  # fmt: skip
    assert done["refused"] is False and done["degraded"] is False and done["answer_id"]
    timings = done["timings"]
    assert isinstance(timings, dict)
    assert 0 < timings["first_token_ms"] <= timings["total_ms"] and "generate_ms" in timings
    assert call.streamed and call.pattern is not None


def test_ask_and_stream_agree() -> None:
    reply = cite(("Reset it in the portal", VPN))
    question = Question(access=ALL, text="Where do I reset a forgotten VPN password?")
    whole = ask(make_kb(reply), question)
    events = stream(make_kb(reply), question)
    citations = payload(events, "citations")
    assert citations["answer"] == whole.answer
    assert citations["citations"] == [c.model_dump() for c in whole.citations]
    assert citations["sources"] == [c.model_dump() for c in whole.sources]
    assert citations["sentences"] == [s.model_dump() for s in whole.sentences]


# -- language, history -------------------------------------------------------------------------------------


def test_a_chinese_question_gets_the_chinese_prompt_and_bm25_retrieval() -> None:
    kb = make_kb(cite(("报销单须在30天内提交", EXPENSE_ZH), end="。"))
    answer = ask(kb, Question(access=ALL, text="报销单要在多少天内提交？"))
    call = kb.generator.calls[0]
    assert SYSTEM_ZH in call.messages[0].content and "报销单要在多少天内提交？" in call.messages[-1].content
    assert (
        call.pattern is not None and re.escape(REFUSAL_ZH) in call.pattern and re.escape(REFUSAL_EN) not in call.pattern
    )
    assert [c.doc_id for c in answer.citations] == ["expense-policy-zh.md"] and answer.grounded
    # The English-only embedder does not understand Chinese: BM25 alone, and the question is not embedded.
    assert kb.store.searches[-1].mode == "bm25"
    assert all("报销单要在多少天内提交？" not in texts for texts, _ in kb.embedder.calls)


def test_an_english_question_gets_the_english_prompt_and_hybrid_retrieval() -> None:
    kb = make_kb(cite(("Reset it in the portal", VPN)))
    ask(kb, Question(access=ALL, text="Where do I reset a forgotten VPN password?"))
    call = kb.generator.calls[0]
    assert SYSTEM_EN in call.messages[0].content and SYSTEM_ZH not in call.messages[0].content
    assert (
        call.pattern is not None and re.escape(REFUSAL_EN) in call.pattern and re.escape(REFUSAL_ZH) not in call.pattern
    )
    assert kb.store.searches[-1].mode == "hybrid"
    assert (("Where do I reset a forgotten VPN password?",), "query") in kb.embedder.calls


def test_refusals_are_in_the_question_language() -> None:
    kb = make_kb("unused", thresholds=RelevanceThresholds.off(cosine=0.3, lexical=0.5))
    assert ask(kb, Question(access=ALL, text="停车场的颜色是什么？")).answer == REFUSAL_ZH
    assert ask(kb, Question(access=ALL, text="Photosynthesis in tropical algae")).answer == REFUSAL_EN
    assert kb.generator.calls == []


HISTORY = [
    ChatMessage(role="user", content="Where do I reset my VPN password?"),
    ChatMessage(role="assistant", content="In the self-service portal [1]."),
    ChatMessage(role="user", content="Is the portal open at night?"),
    ChatMessage(role="assistant", content="Not found in the knowledge base."),
    ChatMessage(role="user", content="How many days of annual leave do new employees get?"),
    ChatMessage(role="assistant", content="New employees get 20 days [1]."),
]


def test_history_goes_to_the_model_between_instructions_and_question() -> None:
    kb = make_kb(cite(("Unused leave can be carried over until March", CARRY)))
    history = [ChatMessage(role="user", content="Hello"), ChatMessage(role="assistant", content="Hi."), *HISTORY]
    answer = ask(kb, Question(access=ALL, text="Can unused leave be carried over?", history=history))
    (call,) = kb.generator.calls
    assert [m.role for m in call.messages] == ["system", *(m.role for m in HISTORY), "user"]
    assert call.messages[1:-1] == HISTORY  # the last six turns, in order
    assert "Can unused leave be carried over?" in call.messages[-1].content
    # A question with a subject of its own is searched as asked: the history does not change the search.
    assert [s.query for s in kb.store.searches] == ["Can unused leave be carried over?"]
    assert answer.timings["condensed"] is False
    assert [c.doc_id for c in answer.citations] == ["leave-policy.md"]


def test_without_a_condenser_a_follow_up_is_searched_with_the_previous_turn_beside_it() -> None:
    kb = make_kb(cite(("Unused leave can be carried over until March", CARRY)))
    answer = ask(kb, Question(access=ALL, text="And can it be carried over?", history=HISTORY))
    queries = [s.query for s in kb.store.searches]
    assert queries == [f"{HISTORY[4].content}\nAnd can it be carried over?", "And can it be carried over?"]
    assert answer.timings["condensed"] is True


def test_a_follow_up_is_condensed_by_the_model_before_retrieval() -> None:
    kb = make_kb("How do I reset a forgotten VPN password?", cite(("Use the portal", VPN)), condense=True)
    events = stream(kb, Question(access=ALL, text="And if I forgot it?", history=HISTORY[:2]))
    condense, answer = kb.generator.calls
    assert condense.pattern is None and not condense.streamed and "And if I forgot it?" in condense.messages[0].content
    # The rewrite keeps the question's own term ("forgot") and is searched beside the question as asked.
    queries = [s.query for s in kb.store.searches]
    assert queries == ["How do I reset a forgotten VPN password? forgot", "And if I forgot it?"]
    assert answer.streamed and answer.messages[1:-1] == HISTORY[:2]
    assert docs(payload(events, "citations")["citations"]) == ["vpn-guide.md"]
    timings = payload(events, "done")["timings"]
    assert isinstance(timings, dict) and "condense_ms" in timings and timings["condensed"] is True


def test_a_self_contained_question_after_another_topic_is_not_rewritten() -> None:
    # The rewrite would drag the question back to the VPN topic: it must not even be asked for.
    kb = make_kb(cite(("报销单须在30天内提交", EXPENSE_ZH), end="。"), condense=True)
    answer = ask(kb, Question(access=ALL, text="报销需要在多少天内提交？", history=HISTORY[:2]))
    (call,) = kb.generator.calls  # the answer only: no condense call
    assert "报销需要在多少天内提交？" in call.messages[-1].content
    assert [s.query for s in kb.store.searches] == ["报销需要在多少天内提交？"]
    assert "condense_ms" not in answer.timings and answer.timings["condensed"] is False


# -- access control and hidden versions ----------------------------------------------------------------


SALARY_QUESTION = "What are the salary bands for engineers?"


@pytest.mark.parametrize("groups", [[], ["staff"], ["finance", "it"]])
def test_a_restricted_chunk_never_reaches_a_caller_outside_its_groups(groups: list[str]) -> None:
    kb = make_kb(lambda messages: "See the first source [1].")
    question = Question(access=Access.groups(groups), text=SALARY_QUESTION)
    answer = ask(kb, question)
    events = stream(kb, question)
    assert answer.sources, "other documents are still found"
    assert "salary-bands.md" not in {s.doc_id for s in answer.sources}
    assert "salary-bands.md" not in docs(payload(events, "citations")["sources"])
    assert all(SALARY not in m.content for call in kb.generator.calls for m in call.messages)
    assert [s.flt.access for s in kb.store.searches] == [Access.groups(groups)] * 2


@pytest.mark.parametrize(
    "access", [Access.groups(["hr"]), Access.groups(["staff", "hr"]), ALL], ids=["hr", "staff+hr", "unrestricted"]
)
def test_a_restricted_chunk_reaches_its_groups(access: Access) -> None:
    kb = make_kb(cite(("Engineers earn 60000 to 90000 euros", SALARY)))
    answer = ask(kb, Question(access=access, text=SALARY_QUESTION))
    assert answer.sources[0].doc_id == "salary-bands.md"
    assert [c.doc_id for c in answer.citations] == ["salary-bands.md"]


def test_hidden_versions_never_appear() -> None:
    question = Question(access=ALL, text="How much does a parking permit cost per month?")
    kb = make_kb(cite(("A permit costs 45 euros", PARKING_V2)), hidden=[("parking.md", 1)])
    answer = ask(kb, question)
    events = stream(kb, question)
    assert [(c.doc_id, c.snippet) for c in answer.citations] == [("parking.md", PARKING_V2)]
    assert PARKING_V1 not in {s.snippet for s in answer.sources}
    assert all(PARKING_V1 not in m.content for call in kb.generator.calls for m in call.messages)
    assert all(s.flt.hidden_versions == [("parking.md", 1)] for s in kb.store.searches)
    assert PARKING_V1 not in {str(s["snippet"]) for s in payload(events, "citations")["sources"]}  # type: ignore[attr-defined]
    # The control: nothing hidden, and both versions are found.
    both = make_kb(cite(("A permit costs 45 euros", PARKING_V2)), hidden=[])
    assert {PARKING_V1, PARKING_V2} <= {s.snippet for s in ask(both, question).sources}


# -- QueryPipeline -----------------------------------------------------------------------------------------


def pipeline(kb: Kb, **kwargs: object) -> QueryPipeline:
    return QueryPipeline(embedder=kb.embedder, store=kb.store, candidates=10, **kwargs)  # type: ignore[arg-type]


def test_the_reranker_orders_the_hits_and_its_probability_is_the_relevance() -> None:
    kb = make_kb()
    reranker = FakeReranker()
    r = pipeline(kb, reranker=reranker, rerank_candidates=5).search("forgotten VPN password", flt=EVERYTHING, top_k=3)
    assert r.reranked and "rerank_ms" in r.timings and len(reranker.calls) == 1
    assert r.hits[0].chunk.doc_id == "vpn-guide.md" and {h.score_kind for h in r.hits} == {"rerank"}
    assert r.relevance.kind == "rerank" and r.relevance.value == r.hits[0].score == 1.0
    assert [h.score for h in r.hits] == sorted((h.score for h in r.hits), reverse=True)


def test_a_low_rerank_probability_means_no_relevant_context() -> None:
    kb = make_kb()
    low = FakeReranker(scores={c.chunk_id: 0.2 for c in kb.store.chunks("default")})
    thresholds = RelevanceThresholds.off(rerank=0.5)
    r = pipeline(kb, reranker=low, thresholds=thresholds).search("forgotten VPN password", flt=EVERYTHING, top_k=3)
    assert r.hits and r.no_relevant_context and r.sources == [] and r.relevance.value == 0.2
    ok = pipeline(kb, reranker=FakeReranker(), thresholds=thresholds).search(
        "forgotten VPN password", flt=EVERYTHING, top_k=3
    )
    assert not ok.no_relevant_context and ok.sources[0].hit.chunk.doc_id == "vpn-guide.md"


def test_a_missing_reranker_is_reported() -> None:
    r = pipeline(make_kb(), reranker=None, rerank_wanted=True).search("annual leave", flt=EVERYTHING, top_k=3)
    assert not r.reranked and r.timings["rerank_unavailable"] == 1.0 and r.hits[0].score_kind == "weighted"


def test_hybrid_relevance_is_the_best_stored_cosine() -> None:
    kb = make_kb()
    r = pipeline(kb).search("paid annual leave for new employees", flt=EVERYTHING, top_k=3)
    vector = kb.embedder.embed(["paid annual leave for new employees"], "query")[0]
    expected = max(sum(a * b for a, b in zip(vector, v, strict=True))
                   for v in kb.embedder.embed([h.chunk.text for h in r.hits], "passage"))  # fmt: skip
    assert r.mode == "hybrid" and r.relevance.kind == "cosine"
    assert r.relevance.value == pytest.approx(expected)


def test_an_embedder_for_every_language_searches_chinese_with_both() -> None:
    kb = make_kb()
    multilingual = FakeEmbedder(languages=frozenset({"*"}))
    r = QueryPipeline(embedder=multilingual, store=kb.store, candidates=10).search(
        "报销单要在多少天内提交？", flt=EVERYTHING
    )
    assert (
        r.mode == "hybrid" and r.language == "zh" and multilingual.calls == [(("报销单要在多少天内提交？",), "query")]
    )
    assert r.hits[0].chunk.doc_id == "expense-policy-zh.md"


def test_top_k_bounds_the_sources() -> None:
    kb = make_kb(lambda messages: "See the first source [1].")
    answer = ask(kb, Question(access=ALL, text="annual leave VPN password parking permit", top_k=2))
    assert len(answer.sources) <= 2 and len(prompt_sources(kb.generator.calls[0].messages)) == len(answer.sources)


def test_a_failing_rerank_service_costs_the_ranking_not_the_answer_and_is_reported() -> None:
    from core.protocols import RerankerUnavailable

    class DownReranker:
        def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]:
            raise RerankerUnavailable("the rerank service at http://rerank/rerank failed: connection refused")

    kb = make_kb()
    r = pipeline(kb, reranker=DownReranker()).search("forgotten VPN password", flt=EVERYTHING, top_k=3)
    assert r.hits and not r.reranked and "rerank_ms" not in r.timings
    assert r.timings["rerank_unavailable"] == 1.0 and {h.score_kind for h in r.hits} != {"rerank"}


VPN_TURN = [
    ChatMessage(role="user", content="How do I reset a forgotten VPN password?"),
    ChatMessage(role="assistant", content="In the self-service portal [1]."),
]


def test_a_question_the_previous_turn_makes_far_more_findable_is_a_follow_up() -> None:
    # No pronoun, no opener: only the conversation says which password this is about.
    kb = make_kb(cite(("Use the portal", VPN)), followup_gain=0.15)
    answer = ask(kb, Question(access=ALL, text="What is the procedure?", history=VPN_TURN))
    assert answer.timings["condensed"] is True and "followup_check_ms" in answer.timings
    assert [c.doc_id for c in answer.citations] == ["vpn-guide.md"]
    # The probe (with the previous turn, and alone), then the search: the previous turn beside the question.
    probe = f"{VPN_TURN[0].content}\nWhat is the procedure?"
    assert [s.query for s in kb.store.searches][-2:] == [probe, "What is the procedure?"]


def test_a_change_of_topic_gains_nothing_from_the_previous_turn() -> None:
    kb = make_kb(cite(("New employees get 20 days", LEAVE)), followup_gain=0.15)
    question = "How many days of paid annual leave do new employees get per year?"
    answer = ask(kb, Question(access=ALL, text=question, history=VPN_TURN))
    assert answer.timings["condensed"] is False and "followup_check_ms" in answer.timings
    assert [s.query for s in kb.store.searches][-1] == question
    assert [c.doc_id for c in answer.citations] == ["leave-policy.md"]

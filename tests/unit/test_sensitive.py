"""SensitiveTerms: questions refused, answers withheld (whole and streamed), on the in-memory fakes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.answers.sensitive import WITHHELD_MESSAGE, SensitiveTerm, SensitiveTerms
from app.answers.service import AnswerService, Question, StreamEvent
from app.settings import SecuritySettings
from core.types import Access, Answer, ChatMessage, Chunk, RelevanceThresholds
from retrieval.pipeline import QueryPipeline
from serving.prompts import PromptBook
from tests.fakes import FakeEmbedder, FakeGenerator, FakeVectorStore
from tests.support_scorer import support_scorer

FACT = "The Falcon project launches in March with a budget of two million euros."
QUESTION = Question(text="When does the new project launch?", access=Access.groups(["a"]))
TERMS = SensitiveTerms(["project falcon", "falcon project"])


def service(reply: str, *, piece_chars: int = 5) -> tuple[AnswerService, FakeGenerator]:
    embedder = FakeEmbedder()
    store = FakeVectorStore(dimension=embedder.dimension)
    chunk = Chunk(
        chunk_id=Chunk.make_id("plans.md", 1, 0), doc_id="plans.md", version=1, ordinal=0, title="Plans",
        source="/docs/plans.md", page=1, acl_groups=["a"], text=FACT,
    )  # fmt: skip
    store.upsert("default", [chunk], embedder.embed([chunk.text], "passage"))
    generator = FakeGenerator(reply, piece_chars=piece_chars)
    query = QueryPipeline(embedder=embedder, store=store, candidates=5, thresholds=RelevanceThresholds.off())
    answers = AnswerService(
        query=query, generator=generator, prompts=PromptBook(), top_k=3, citation_guard=False,
        support=support_scorer(embedder),
    )  # fmt: skip
    return answers, generator


def ask(answers: AnswerService) -> Answer:
    return asyncio.run(answers.ask(QUESTION))


def stream(answers: AnswerService, terms: SensitiveTerms) -> list[StreamEvent]:
    async def run() -> list[StreamEvent]:
        return [event async for event in terms.screen_stream(answers.stream(QUESTION))]

    return asyncio.run(run())


def test_terms_match_case_insensitively_anywhere() -> None:
    assert TERMS.enabled and not SensitiveTerms(["", "  "]).enabled
    assert TERMS.find("Budget of PROJECT FALCON?") == "project falcon"
    assert TERMS.find("the falcon projects") == "falcon project"
    assert TERMS.find("a falcon flew over the project") is None
    assert SensitiveTerms([]).find("project falcon") is None


def test_a_question_with_a_term_is_refused_even_in_the_history() -> None:
    TERMS.check_question("When is the launch?")
    with pytest.raises(SensitiveTerm) as refused:
        TERMS.check_question("What is Project Falcon's budget?")
    assert (refused.value.status_code, refused.value.code) == (400, "sensitive_term")
    assert "falcon" not in refused.value.message.lower()
    with pytest.raises(SensitiveTerm):
        TERMS.check_question("and its budget?", [ChatMessage(role="user", content="tell me about project falcon")])


def test_terms_come_from_the_settings_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "terms.txt"
    path.write_text("# one per line\n\n  Orion \n", encoding="utf-8")
    terms = SensitiveTerms.from_settings(SecuritySettings(sensitive_terms=["Falcon"], sensitive_terms_file=path))
    assert terms.find("ORION") == "orion" and terms.find("falcon") == "falcon"
    with pytest.raises(FileNotFoundError):
        SensitiveTerms.from_settings(SecuritySettings(sensitive_terms_file=tmp_path / "missing.txt"))


def test_an_answer_with_a_term_is_withheld() -> None:
    answers, generator = service("It is Project Falcon, launching in March [1].")
    original = ask(answers)
    assert "Project Falcon" in original.answer and original.citations  # what the model wrote
    withheld = TERMS.screen(original)
    assert withheld.withheld and withheld.answer == WITHHELD_MESSAGE and withheld.message == WITHHELD_MESSAGE
    assert (withheld.citations, withheld.sources, withheld.sentences, withheld.grounded) == ([], [], [], False)
    assert "falcon" not in withheld.model_dump_json().lower()
    assert len(generator.calls) == 1


def test_an_answer_without_a_term_is_left_alone() -> None:
    answers, _ = service("It launches in March [1].")
    answer = ask(answers)
    assert TERMS.screen(answer) is answer and not answer.withheld


def test_a_stream_stops_before_the_token_that_completes_a_term() -> None:
    # Five characters a piece: ..., "new P", "rojec", "t Fal", "con, ": the last of them completes the term.
    answers, _ = service("It is the new Project Falcon, launching in March [1].", piece_chars=5)
    events = stream(answers, TERMS)
    assert [e.name for e in events][-1] == "error"
    assert {e.name for e in events} == {"token", "error"}  # no citations, no done
    assert events[-1].data == {"code": "withheld", "message": WITHHELD_MESSAGE}
    sent = "".join(str(e.data["text"]) for e in events if e.name == "token")
    assert sent == "It is the new Project Fal"


def test_a_stream_without_a_term_is_unchanged() -> None:
    answers, _ = service("It launches in March [1].")
    screened = stream(answers, TERMS)
    unscreened = stream(service("It launches in March [1].")[0], SensitiveTerms([]))
    assert [e.name for e in screened] == ["token"] * 5 + ["citations", "done"]
    assert [(e.name, e.data) for e in screened if e.name == "token"] == [
        (e.name, e.data) for e in unscreened if e.name == "token"
    ]


def test_a_term_only_in_the_verified_text_withholds_the_citations() -> None:
    # The stream shows "[9]"; the verified text (invalid marker removed) joins it into the term.
    answers, _ = service("Project[9] Falcon launches [1].", piece_chars=100)
    terms = SensitiveTerms(["project falcon"])
    events = stream(answers, terms)
    assert [e.name for e in events] == ["token", "error"]
    assert events[-1].data["code"] == "withheld"

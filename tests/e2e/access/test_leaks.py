"""Leak probes: keys of group `a` ask, in every way the API allows, for facts that only group `b`'s
documents (and one document without groups) hold, and no chunk id, doc id, title or fact of those
documents may appear anywhere in any response. Group `b`'s own key and the admin key find those same
documents with the same questions, and `a`'s key finds its own: the probes can fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.access.conftest import (
    ADMIN,
    EMPLOYEE_A,
    EMPLOYEE_B,
    SERVICE,
    SERVICE_SECRET,
    LiveServer,
    assert_error_shape,
)
from tests.e2e.access.corpus import (
    A_DOCS,
    A_SECRET_DOCS,
    B_DOCS,
    B_SECRET_DOCS,
    FORBIDDEN_TO_A,
    PUBLIC_DOCS,
    Project,
)

pytestmark = pytest.mark.e2e

MODES = ("dense", "bm25", "hybrid")
# Probes sent by other keys than employee a's, added to the total at the end.
_TOTALS: dict[str, int] = {}


def questions(p: Project) -> list[str]:
    """Verbatim quotes, paraphrases and Chinese, each aimed at one project's facts."""
    return [
        f"What is the budget of Project {p.code}?",
        f"{p.phrase}",
        f"Who leads {p.word} and where is it run from?",
        f"How much money was approved for the {p.word.lower()} initiative next year?",
        f"{p.lead} {p.site} {p.budget}",
        f"项目{p.zh}的预算是多少？",
        f"{p.zh}项目的负责人是谁，在哪里工作？",
    ]


@dataclass
class Probes:
    """Sends probes and scans every response for the forbidden documents' markers."""

    client: httpx.Client
    headers: dict[str, str]
    forbidden: list[Project]
    count: int = 0
    leaks: list[str] = field(default_factory=list)
    _seen: int = 0

    def new_leaks(self) -> list[str]:
        """The leaks found since the last call: each test answers for its own probes."""
        new, self._seen = self.leaks[self._seen :], len(self.leaks)
        return new

    def _scan(self, what: str, text: str) -> None:
        lowered = text.lower()
        for project in self.forbidden:
            found = [m for m in project.markers() if m.lower() in lowered]
            if found:
                self.leaks.append(f"{what}: {project.doc_id} {found}")

    def search(self, body: dict[str, Any]) -> httpx.Response:
        r = self.client.post("/search", json=body, headers=self.headers)
        self.count += 1
        if r.status_code == 200:
            data = r.json()
            data.pop("query")  # the caller's own words, echoed back
            self._scan(f"/search {body}", json.dumps(data, ensure_ascii=False))
        else:
            self._scan(f"/search {body}", r.text)
        return r

    def ask(self, body: dict[str, Any]) -> httpx.Response:
        r = self.client.post("/ask", json=body, headers=self.headers)
        self.count += 1
        self._scan(f"/ask {body}", json.dumps(r.json(), ensure_ascii=False) if r.content else "")
        return r

    def ask_stream(self, body: dict[str, Any]) -> list[tuple[str, Any]]:
        with connect_sse(self.client, "POST", "/ask", json={**body, "stream": True}, headers=self.headers) as source:
            assert source.response.status_code == 200
            events = [(e.event, e.json()) for e in source.iter_sse()]
        self.count += 1
        self._scan(f"/ask stream {body}", json.dumps(events, ensure_ascii=False))
        return events


@pytest.fixture(scope="module")
def probes(live: LiveServer, client: httpx.Client) -> Iterator[Probes]:
    p = Probes(client=client, headers=live.headers(live.key(EMPLOYEE_A)), forbidden=FORBIDDEN_TO_A)
    yield p


def test_the_forbidden_documents_are_there_to_be_found(live: LiveServer, client: httpx.Client) -> None:
    """The same questions reach the `b` documents for `b`'s key and the admin's: a missing filter would leak."""
    for key, kb, docs in ((EMPLOYEE_B, "default", B_DOCS), (EMPLOYEE_B, "secret", B_SECRET_DOCS),
                          (ADMIN, "default", B_DOCS)):  # fmt: skip
        for i, project in enumerate(docs):
            # English in a mode each; Chinese by keyword (MiniLM reads English only).
            cases = [(questions(project)[0], MODES[i % 3]), (questions(project)[5], MODES[1 + i % 2])]
            for q, mode in cases:
                body = {"query": q, "kb": kb, "mode": mode, "top_k": 3}
                hits = client.post("/search", json=body, headers=live.headers(live.key(key))).json()["hits"]
                assert project.doc_id in [h["doc_id"] for h in hits], (key, body, hits)
            question = questions(project)[i % 2]
            answer = client.post("/ask", json={"question": question, "kb": kb}, headers=live.headers(live.key(key)))
            assert answer.json()["sources"][0]["doc_id"] == project.doc_id, answer.text


def test_group_a_finds_its_own_documents(probes: Probes) -> None:
    for i, project in enumerate(A_DOCS):
        hits = probes.search({"query": questions(project)[0], "mode": MODES[i % 3], "top_k": 3}).json()["hits"]
        assert project.doc_id in [h["doc_id"] for h in hits], hits
        answer = probes.ask({"question": questions(project)[0]}).json()
        assert answer["sources"][0]["doc_id"] == project.doc_id, answer
        assert any(project.budget in c["snippet"] for c in answer["citations"]), answer
    assert not probes.new_leaks()


def test_search_never_returns_group_b(probes: Probes) -> None:
    for i, project in enumerate(B_DOCS):
        # The verbatim question in every mode, the other forms in one mode each, turn about.
        cases = [(questions(project)[0], m) for m in MODES]
        cases += [(q, MODES[(i + j) % 3]) for j, q in enumerate(questions(project)[1:])]
        for q, mode in cases:
            r = probes.search({"query": q, "mode": mode, "top_k": 50})
            assert r.status_code == 200, r.text
            assert {h["doc_id"] for h in r.json()["hits"]} <= {p.doc_id for p in (*A_DOCS, *PUBLIC_DOCS)}
    assert not probes.new_leaks()


def test_ask_never_answers_from_group_b(probes: Probes) -> None:
    for i, project in enumerate(B_DOCS):
        # Verbatim, paraphrased and Chinese, in a mode each.
        for j, q in enumerate(questions(project)[i % 2 :: 2]):
            r = probes.ask({"question": q, "top_k": 50, "mode": MODES[(i + j) % 3]})
            assert r.status_code == 200, r.text
        events = probes.ask_stream({"question": questions(project)[0], "top_k": 50})
        assert [name for name, _ in events][-1] == "done"
    assert not probes.new_leaks()


def test_history_naming_b_facts_does_not_widen_access(probes: Probes) -> None:
    for project in B_DOCS[::2]:
        history = [
            {"role": "user", "content": f"Tell me about project {project.code} led by {project.lead}."},
            {"role": "assistant", "content": f"{project.code} is run from {project.site}."},
        ]
        for question in ("And what is its budget?", "它的预算是多少？"):
            r = probes.ask({"question": question, "history": history, "top_k": 50})
            assert r.status_code == 200, r.text
            # The history reaches the answer only as retrieval input; it is not echoed back.
        probes.ask_stream({"question": "What else do you know about it?", "history": history})
    assert not probes.new_leaks()


# kb values a caller might try; each is refused, as a name the key holds no grant for (403) or as no
# valid name at all (422).
CRAFTED_KBS = {
    "secret": 403, "DEFAULT": 403, "Default": 403, "default_": 403, "no_such_kb": 403,
    "../secret": 422, "default\" or 1==1": 422, "": 422, "default/../secret": 422, "secret\x00": 422,
    "default ": 422, "*": 422, "%": 422, "default' OR '1'='1": 422, "default,secret": 422,
}  # fmt: skip


def test_crafted_knowledge_base_names_are_refused(probes: Probes) -> None:
    q = questions(B_SECRET_DOCS[0])[0]
    for kb, status in CRAFTED_KBS.items():
        for r in (probes.search({"query": q, "kb": kb}), probes.ask({"question": q, "kb": kb})):
            assert r.status_code == status, (kb, r.text)
            assert_error_shape(r)
    assert not probes.new_leaks()


def test_fields_the_api_does_not_take_change_nothing(probes: Probes) -> None:
    """Filters, groups or tags smuggled into the body are ignored: they never widen what the key reads."""
    extra: list[dict[str, Any]] = [
        {"acl_groups": ["b"]}, {"groups": ["b", "public"]}, {"access": "everything"}, {"tags": ["b"]},
        {"filter": "acl_groups != []"}, {"doc_ids": [B_DOCS[0].doc_id]}, {"kbs": ["*"]}, {"role": "admin"},
        {"expr": "doc_id like '%'"},
    ]  # fmt: skip
    for smuggled in extra:
        probes.search({"query": questions(B_DOCS[0])[0], "top_k": 50, **smuggled})
        probes.ask({"question": questions(B_DOCS[1])[0], "top_k": 50, **smuggled})
    assert not probes.new_leaks()


def test_service_key_on_the_secret_kb_sees_group_a_only(live: LiveServer, client: httpx.Client) -> None:
    svc = Probes(client=client, headers=live.headers(live.key(SERVICE_SECRET)), forbidden=FORBIDDEN_TO_A)
    for i, project in enumerate(B_SECRET_DOCS):
        for j, q in enumerate(questions(project)):
            body = {"query": q, "kb": "secret", "mode": MODES[(i + j) % 3], "top_k": 50}
            hits = svc.search(body).json()["hits"]
            assert {h["doc_id"] for h in hits} <= {p.doc_id for p in A_SECRET_DOCS}, hits
        svc.ask({"question": questions(project)[i], "kb": "secret", "top_k": 50})
    own = svc.search({"query": questions(A_SECRET_DOCS[0])[0], "kb": "secret"}).json()["hits"]
    assert own[0]["doc_id"] == A_SECRET_DOCS[0].doc_id
    # The same questions from the service key of the `default` grant only: refused outright.
    plain = Probes(client=client, headers=live.headers(live.key(SERVICE)), forbidden=FORBIDDEN_TO_A)
    r = plain.search({"query": questions(B_SECRET_DOCS[0])[0], "kb": "secret"})
    assert r.status_code == 403
    assert not svc.leaks and not plain.leaks, (svc.leaks, plain.leaks)
    _TOTALS["service"] = svc.count + plain.count


def test_at_least_a_hundred_probes_and_no_leak(probes: Probes) -> None:
    total = probes.count + _TOTALS.get("service", 0)
    print(f"\nleak probes sent: {total} (employee a: {probes.count}); leaks: {len(probes.leaks)}")
    assert probes.count >= 100, probes.count
    assert not probes.new_leaks()

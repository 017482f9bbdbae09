"""kb's MCP server through the official `mcp` client, as agents reach it: over streamable HTTP against a
real API process (the key in the Authorization header), and over stdio by launching `kb mcp --stdio`.

One document in group "a", one in group "b", an employee key in group "a": the key finds and reads the
"a" document and never sees the "b" one, and asking for it reads exactly like asking for a document that
does not exist. The model server is a closed port, so `ask` answers in degraded mode: the passages with
their citations, which is what these tests check (generation has its own tests).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from app.access.bootstrap import ensure_default_kb
from app.access.principal import ALL_KBS
from app.access.roles import Role
from app.container import Container
from core.procs import free_port
from tests.api_process import KB, ApiProcess, KbHome, api_process, shared_home

pytestmark = pytest.mark.integration

# Long enough for several chunks (with the splitter's overlap), so that get_document has to reassemble.
FALCON_STEPS = [
    f"Step {n}: the Falcon launch crew checks subsystem number {n} and signs the checklist line {n}."
    for n in range(1, 121)
]
FALCON_A = "# Falcon launch checklist\n\n" + "\n\n".join(
    ["The Falcon satellite launches from Kourou on 12 May; the launch window opens at 09:00 UTC.", *FALCON_STEPS]
)
FALCON_B = (
    "# Falcon budget\n\nThe Falcon programme budget is 4.2 million euros, approved by the board in March. "
    "Budget holders report Falcon spending monthly to the finance office."
)


@dataclass(frozen=True)
class Setup:
    kb_home: KbHome
    api: ApiProcess
    employee: str  # groups ["a"], knowledge base "default"
    service: str  # may ask and search, not read documents
    admin: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("mcp")
    closed = free_port()  # nothing listens here: the model is down, answers degrade to passages
    with shared_home(
        root / "var", root / "models",
        KB_LLM__BASE_URL=f"http://127.0.0.1:{closed}/v1", KB_LLM__CONNECT_RETRIES="0", KB_LLM__TIMEOUT_S="5",
        KB_LLM__ANSWER_MODE="generative",  # the model's path, which is down: degraded answers
    ) as kb_home:  # fmt: skip
        c = Container(kb_home.settings)
        ensure_default_kb(c.registry, kb_home.settings)
        c.registry.create_knowledge_base("board", description="Board minutes (admins only)")
        docs = root / "docs"
        docs.mkdir()
        (docs / "falcon-launch.md").write_text(FALCON_A, encoding="utf-8")
        (docs / "falcon-budget.md").write_text(FALCON_B, encoding="utf-8")
        for name, group in (("falcon-launch.md", "a"), ("falcon-budget.md", "b")):
            (result,) = c.ingest.ingest_paths([docs / name], kb="default", acl_groups=[group])
            assert result.status == "indexed", result
        assert len({ch.chunk_id for ch in c.store.document_chunks("default", "falcon-launch.md")}) > 2
        employee = c.keys.create(name="emp", role=Role.employee, groups=["a"], kbs=["default"]).secret
        service = c.keys.create(name="svc", role=Role.service, groups=["a"], kbs=["default"]).secret
        admin = c.keys.create(name="root", role=Role.admin, kbs=[ALL_KBS]).secret
        c.store.close()
        with api_process(kb_home) as api:
            yield Setup(kb_home=kb_home, api=api, employee=employee, service=service, admin=admin)


def http_client(setup: Setup, key: str, mode: str = "auto") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120)
    return Client(streamable_http_client(f"{setup.api.url}/mcp", http_client=http), mode=mode)  # type: ignore[arg-type]


def stdio_client(setup: Setup, key: str) -> Client:
    env = {**setup.kb_home.env, "KB_API_KEY": key}
    return Client(StdioServerParameters(command=KB, args=["mcp", "--stdio"], env=env, cwd=str(setup.kb_home.home)))


def run(client: Client, body: Callable[[Client], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with client:
            return await body(client)

    return anyio.run(main)


def data(result: types.CallToolResult) -> Any:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_text(result: types.CallToolResult) -> str:
    assert result.is_error, result
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_http_lists_the_tools_and_the_knowledge_bases_of_the_key(setup: Setup, mode: str) -> None:
    async def body(client: Client) -> tuple[list[types.Tool], list[types.Resource], str]:
        tools = (await client.list_tools()).tools
        resources = (await client.list_resources()).resources
        listing = (await client.read_resource("kb://knowledge-bases")).contents[0]
        assert isinstance(listing, types.TextResourceContents)
        return tools, resources, listing.text

    tools, resources, listing = run(http_client(setup, setup.employee, mode), body)
    assert {t.name for t in tools} == {"search", "ask", "list_documents", "get_document"}
    # The descriptions say what the key's knowledge bases hold, and name no other.
    search = next(t for t in tools if t.name == "search")
    assert "Company documents" in (search.description or "") and "board" not in (search.description or "")
    assert {r.uri for r in resources} == {"kb://knowledge-bases", "kb://knowledge-bases/default"}
    assert json.loads(listing) == [
        {"name": "default", "description": "Company documents", "uri": "kb://knowledge-bases/default"}
    ]


def test_http_search_keeps_to_the_keys_groups(setup: Setup) -> None:
    async def body(client: Client) -> list[Any]:
        found = []
        for query in ("Falcon launch window Kourou", "Falcon budget million euros board", "Falcon"):
            found.append(data(await client.call_tool("search", {"query": query, "top_k": 10}))["hits"])
        return found

    launch, budget, falcon = run(http_client(setup, setup.employee), body)
    assert launch and launch[0]["doc_id"] == "falcon-launch.md"
    assert {"title", "page", "snippet", "doc_id", "score"} <= set(launch[0])
    for hits in (launch, budget, falcon):
        assert all(h["doc_id"] == "falcon-launch.md" for h in hits), hits
    # The filter is the key's, not a property of the data: an admin finds the budget.
    (admin,) = run(http_client(setup, setup.admin), body)[1:2]
    assert admin[0]["doc_id"] == "falcon-budget.md"


def test_http_ask_answers_with_citations(setup: Setup) -> None:
    answer = run(
        http_client(setup, setup.employee),
        lambda c: c.call_tool("ask", {"question": "When does the Falcon launch window open?"}),
    )
    body = data(answer)
    # The model is down: the passages come back, cited, and flagged as degraded.
    assert body["degraded"] is True and body["refused"] is False
    assert body["citations"] and {c["doc_id"] for c in body["citations"]} == {"falcon-launch.md"}
    assert "[1]" in body["answer"]


def test_http_ask_reads_a_follow_up_in_the_light_of_its_history(setup: Setup) -> None:
    history = [
        {"role": "user", "content": "What is the Falcon programme budget?"},
        {"role": "assistant", "content": "4.2 million euros [1]."},
    ]
    question = "And who approved it?"

    async def body(client: Client) -> tuple[Any, Any]:
        alone = data(await client.call_tool("ask", {"question": question}))
        followed = data(await client.call_tool("ask", {"question": question, "history": history}))
        return alone, followed

    alone, followed = run(http_client(setup, setup.admin), body)
    # Searched beside the question it follows, the follow-up finds the budget; alone it has no subject.
    assert followed["citations"] and followed["citations"][0]["doc_id"] == "falcon-budget.md", followed
    assert alone["refused"] or alone["citations"][0]["doc_id"] != "falcon-budget.md", alone
    bad = run(
        http_client(setup, setup.admin),
        lambda c: c.call_tool("ask", {"question": question, "history": [{"role": "system", "content": "x"}]}),
    )
    assert "history" in error_text(bad)


def test_http_documents_the_key_may_not_read_look_missing(setup: Setup) -> None:
    async def body(client: Client) -> dict[str, Any]:
        return {
            "list": await client.call_tool("list_documents", {}),
            "own": await client.call_tool("get_document", {"doc_id": "falcon-launch.md"}),
            "other": await client.call_tool("get_document", {"doc_id": "falcon-budget.md"}),
            "missing": await client.call_tool("get_document", {"doc_id": "no-such.md"}),
            "other_kb": await client.call_tool("search", {"query": "minutes", "kb": "board"}),
        }

    r = run(http_client(setup, setup.employee), body)
    assert [d["doc_id"] for d in data(r["list"])["documents"]] == ["falcon-launch.md"]
    text = data(r["own"])["text"]
    # Reassembled from its chunks: every line once, in order, the overlap between chunks not repeated.
    assert text.count("launch window opens at 09:00 UTC") == 1
    positions = [text.find(step) for step in FALCON_STEPS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    assert all(text.count(step) == 1 for step in FALCON_STEPS)
    other, missing = error_text(r["other"]), error_text(r["missing"])
    assert other == missing.replace("no-such.md", "falcon-budget.md")
    assert "may not use knowledge base 'board'" in error_text(r["other_kb"])


def test_http_role_permissions_apply_to_tools(setup: Setup) -> None:
    async def body(client: Client) -> tuple[set[str], types.CallToolResult]:
        names = {t.name for t in (await client.list_tools()).tools}
        return names, await client.call_tool("get_document", {"doc_id": "falcon-launch.md"})

    names, refused = run(http_client(setup, setup.service), body)
    assert names == {"search", "ask"}
    assert "may not read documents" in error_text(refused)


def test_http_without_a_valid_key_is_refused(setup: Setup) -> None:
    for headers in ({}, {"Authorization": "Bearer kb_000000000000_wrong"}):
        r = httpx.post(
            f"{setup.api.url}/mcp", headers={**headers, "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=30,
        )  # fmt: skip
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text


def test_stdio_serves_the_same_tools_for_the_key(setup: Setup) -> None:
    async def body(client: Client) -> dict[str, Any]:
        return {
            "tools": {t.name for t in (await client.list_tools()).tools},
            "search": await client.call_tool("search", {"query": "Falcon budget million euros", "top_k": 10}),
            "ask": await client.call_tool("ask", {"question": "Where does the Falcon satellite launch from?"}),
            "other": await client.call_tool("get_document", {"doc_id": "falcon-budget.md"}),
        }

    r = run(stdio_client(setup, setup.employee), body)
    assert r["tools"] == {"search", "ask", "list_documents", "get_document"}
    assert {h["doc_id"] for h in data(r["search"])["hits"]} == {"falcon-launch.md"}
    assert {c["doc_id"] for c in data(r["ask"])["citations"]} == {"falcon-launch.md"}
    assert error_text(r["other"]) == "no document 'falcon-budget.md' in knowledge base 'default'"


def test_stdio_refuses_a_wrong_key(setup: Setup, tmp_path: Path) -> None:
    import subprocess

    for env in ({"KB_API_KEY": "kb_000000000000_wrong"}, {}):
        out = subprocess.run(
            [KB, "mcp", "--stdio"], env={**setup.kb_home.env, **env}, cwd=tmp_path, capture_output=True,
            timeout=120, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert out.returncode == 1, out
        assert b"API key" in out.stderr

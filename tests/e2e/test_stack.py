"""The README's first command end to end: `kb up` starts Milvus Lite, vLLM (SmolLM2 on the CPU) and the
API, ingests data/, answers over HTTP and through `kb ask`, and Ctrl-C stops everything it started.

SmolLM2-135M answers are often wrong; the assertions are on structure, on retrieval (which document
each answer's sources and citations point to) and on the wiring, not on the wording.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.procs import free_port, pid_alive, port_open
from tests.conftest import DATA, ROOT

pytestmark = pytest.mark.e2e

KB = str(Path(sys.executable).parent / "kb")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
LLM_PYTHON = ROOT / ".venv-llm" / "bin" / "python"
MODELS = ROOT / "var" / "models"


@dataclass
class Stack:
    url: str
    llm_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not LLM_PYTHON.exists():
        pytest.fail(f"{LLM_PYTHON} missing: run `make setup` (the e2e tests need the vLLM venv)")
    home = tmp_path_factory.mktemp("stack")
    api_port, llm_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KB_")},
        "KB_HOME": str(home / "var"),
        "KB_MODELS_DIR": str(MODELS),
        "KB_API__PORT": str(api_port),
        "KB_LLM__PORT": str(llm_port),
        "KB_LLM__PYTHON": str(LLM_PYTHON),
        "KB_INGEST__DEMO_DIR": str(DATA),
        "HF_HUB_OFFLINE": "1",
    }
    log = home / "kb-up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([KB, "up"], cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"kb up exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"kb up not ready after 600 s:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        yield Stack(url=url, llm_port=llm_port, env=env, proc=proc, home=home, log=log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()


QUESTIONS = [
    ("How many days of annual leave do new employees get?", "leave-policy.md"),
    ("报销需要在多少天内提交？", "expense-policy-zh.md"),
    ("What is the daily meal allowance for international travel?", "expense-policy.pdf"),
    ("How long must passwords be?", "it-security-policy.docx"),
    ("新员工有几天年假？", "leave-policy-zh.txt"),
]


def test_startup_printed_the_docs_url(stack: Stack) -> None:
    # `kb up` announces the URLs once its own health probe succeeds, a moment after ours may have.
    deadline = time.monotonic() + 15
    while f"API docs: {stack.url}/docs" not in stack.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert f"API docs: {stack.url}/docs" in stack.log.read_text()
    assert httpx.get(f"{stack.url}/docs", timeout=10).status_code == 200
    ready = httpx.get(f"{stack.url}/readyz", timeout=10).json()
    assert ready["components"]["llm"] == "up"


@pytest.mark.parametrize(("question", "doc_id"), QUESTIONS)
def test_ask_answers_with_citations_from_the_right_document(stack: Stack, question: str, doc_id: str) -> None:
    response = httpx.post(f"{stack.url}/ask", json={"question": question}, timeout=180)
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body["degraded"], body
    assert body["answer"].strip()
    assert body["usage"]["completion_tokens"] > 0
    assert body["timings"]["generate_ms"] > 0
    # Retrieval put the document that holds the answer first, and the model was shown it as [1].
    assert body["sources"][0]["doc_id"] == doc_id
    assert body["sources"][0]["index"] == 1
    # Every citation is a real, numbered source and the text carries its marker.
    source_ids = {s["index"]: s["chunk_id"] for s in body["sources"]}
    assert body["citations"] or body["refused"], body
    for c in body["citations"]:
        assert source_ids[c["index"]] == c["chunk_id"]
        assert f"[{c['index']}]" in body["answer"]
    if body["citations"]:
        assert doc_id in {c["doc_id"] for c in body["citations"]}, body


def test_cli_ask_shares_the_running_stack(stack: Stack) -> None:
    out = subprocess.run(
        [KB, "ask", "--json", "How many days of annual leave do new employees get?"],
        env=stack.env, cwd=stack.home, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    answer = json.loads(out.stdout)
    assert answer["sources"][0]["doc_id"] == "leave-policy.md"
    assert answer["sources"][0]["title"] == "Leave Policy"
    assert not answer["degraded"]


def test_search_endpoint_and_cli(stack: Stack) -> None:
    body = httpx.post(f"{stack.url}/search", json={"query": "probation period"}, timeout=60).json()
    assert body["hits"][0]["doc_id"] == "onboarding-guide.txt"
    out = subprocess.run(
        [KB, "search", "--json", "--mode", "bm25", "meal allowance international"],
        env=stack.env, cwd=stack.home, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    hit = json.loads(out.stdout)["hits"][0]
    assert (hit["doc_id"], hit["page"]) == ("expense-policy.pdf", 2)


def test_bad_requests_get_one_json_error_shape(stack: Stack) -> None:
    cases = [
        ("POST", "/ask", {"question": ""}, 422),
        ("POST", "/ask", {"question": "hi", "kb": "../etc"}, 422),
        ("POST", "/ask", {"question": "hi", "top_k": 1000}, 422),
        ("GET", "/no-such-route", None, 404),
    ]
    for method, path, payload, status in cases:
        r = httpx.request(method, f"{stack.url}{path}", json=payload, timeout=30)
        assert r.status_code == status, (path, payload, r.text)
        error = r.json()["error"]
        assert error["code"] and error["message"] and error["request_id"] == r.headers["x-request-id"]
    r = httpx.post(f"{stack.url}/ask", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and "error" in r.json()


def test_chat_ui_is_served(stack: Stack) -> None:
    r = httpx.get(f"{stack.url}/ui/", timeout=30, follow_redirects=True)
    assert r.status_code == 200
    assert "gradio" in r.text.lower()


def test_employee_asks_in_the_chat_and_sees_sources(stack: Stack) -> None:
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: .ci/run installs it with apt-get (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{stack.url}/ui/", wait_until="networkidle")
            box = page.locator("#kb-question textarea")
            box.fill("How many days of annual leave do new employees get?")
            box.press("Enter")
            # The answer arrives in the conversation and the cited sources are listed below it.
            expect(page.locator("#kb-sources")).to_contain_text("Leave Policy", timeout=180_000)
            expect(page.locator("#kb-chat")).to_contain_text("annual leave", timeout=10_000)
            expect(page.locator("#kb-sources")).to_contain_text("leave-policy.md")
            page.screenshot(path=str(stack.home / "ui.png"))
        finally:
            browser.close()


def test_streaming_sends_tokens_then_citations_then_done(stack: Stack) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    payload = {"question": "How many days of annual leave do new employees get?", "stream": True}
    with httpx.stream("POST", f"{stack.url}/ask", json=payload, timeout=180) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    names = [n for n, _ in events]
    assert names[-2:] == ["citations", "done"], names
    assert len(names) > 3 and set(names[:-2]) == {"token"}, names
    citations = events[-2][1]
    sources = citations["sources"]
    assert isinstance(sources, list) and sources[0]["doc_id"] == "leave-policy.md"
    streamed = "".join(str(d["text"]) for n, d in events if n == "token")
    assert streamed.strip()
    done = events[-1][1]
    usage, timings = done["usage"], done["timings"]
    assert isinstance(usage, dict) and usage["completion_tokens"] > 0
    assert isinstance(timings, dict) and 0 < timings["first_token_ms"] <= timings["total_ms"]


def test_bench_e2e_drives_the_api_and_vllm_with_the_same_prompts(stack: Stack) -> None:
    questions = stack.home / "bench-questions.jsonl"
    questions.write_text("\n".join(json.dumps({"question": q}) for q, _ in QUESTIONS[:3:2]), encoding="utf-8")
    out = subprocess.run(
        [KB, "bench", "e2e", "--concurrency", "2", "--requests", "2", "--rounds", "1", "--questions",
         str(questions), "--json"],
        env=stack.env, cwd=stack.home, capture_output=True, timeout=400, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    report = json.loads(out.stdout)
    assert [(r["concurrency"], r["target"]) for r in report["results"]] == [(2, "kb"), (2, "vllm")]
    for r in report["results"]:
        assert r["requests"] == 2 and r["errors"] == 0 and r["qps"] > 0
        assert 0 < r["ttft_p50_ms"] <= r["e2e_p50_ms"]
    assert [s["concurrency"] for s in report["summary"]] == [2]
    assert all(s["qps_ratio"] > 0 for s in report["summary"])


def test_ctrl_c_stops_everything_it_started(stack: Stack) -> None:
    endpoint = json.loads((stack.home / "var" / "run" / "milvus-lite.json").read_text())
    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(timeout=90) == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (port_open("127.0.0.1", stack.llm_port) or pid_alive(endpoint["pid"])):
        time.sleep(1)
    assert not port_open("127.0.0.1", stack.llm_port), "vLLM still listening"
    assert not pid_alive(endpoint["pid"]), "milvus-lite server still running"

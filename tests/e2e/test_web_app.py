"""The web app in Chromium against the real stack (`kb up`: Milvus Lite, vLLM with SmolLM2, the API and
the UI at /ui), as an administrator and as an employee of another group would use it.

SmolLM2-135M answers are often wrong: the assertions are on what the app shows (streaming, cards, badges,
who sees which document), not on the wording of answers. Screenshots of each step go to var/screenshots/.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from core.procs import free_port, port_open
from tests.conftest import DATA, ROOT
from tests.e2e import browser as ui_browser
from tests.e2e.browser import last_answer, send_question, shot, sign_in, wait_answer
from tests.e2e.conftest import LLM_PYTHON, MODELS_DIR, require_llm
from tests.e2e.test_stack import ADMIN_KEY
from tests.servers import wait_until_ready

pytestmark = pytest.mark.e2e

XSS = "<img src=x onerror=alert(1)>"
FALCON_Q = "When does Project Falcon launch and what is its budget?"
A_DOCS = {
    "falcon-plan.md": "# Project Falcon Plan\n\nProject Falcon launches on 14 May 2026 from the Rotterdam office. "
    "The Project Falcon budget is 2.4 million euros, approved by the steering board.\n",
    "falcon-team.md": "# Project Falcon Team\n\nThe Project Falcon team has twelve engineers led by Mira Okafor. "
    "The team meets every Tuesday to review the Falcon launch plan.\n",
}
B_DOCS = {
    "harbor-notes.md": "# Harbor Programme Notes\n\nThe Harbor programme ships quarterly reports to the board. "
    "Harbor has no launch date yet.\n",
}
# Its first heading, read as text, is an HTML tag: the title the app must show as text.
HOSTILE = "# &lt;img src=x onerror=alert(1)&gt;\n\nThe cafeteria serves lunch from noon until two on weekdays.\n"


@dataclass
class WebStack:
    url: str
    key: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path
    docs: Path

    @property
    def ui(self) -> str:
        return f"{self.url}/ui/"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def kb(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
        # This checkout's code, whichever checkout the virtual environment was installed from.
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env=self.env, cwd=self.home,
                              capture_output=True, timeout=timeout, check=False)  # fmt: skip

    def has_route(self, method: str, path: str) -> bool:
        spec = httpx.get(f"{self.url}/openapi.json", headers=self.auth, timeout=30).json()
        return any(
            method.lower() in ops and p.replace(":path}", "}") == path for p, ops in spec.get("paths", {}).items()
        )


def _write(folder: Path, files: dict[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    require_llm()
    ui_browser.require_chromium()
    home = tmp_path_factory.mktemp("web")
    demo = home / "demo"
    demo.mkdir()
    (demo / "leave-policy.md").write_bytes((DATA / "leave-policy.md").read_bytes())
    (demo / "cafeteria.md").write_text(HOSTILE, encoding="utf-8")
    api_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KB_")},
        "PYTHONPATH": str(ROOT), "KB_HOME": str(home / "var"), "KB_MODELS_DIR": str(MODELS_DIR),
        "KB_API__PORT": str(api_port), "KB_LLM__PORT": str(free_port()), "KB_LLM__PYTHON": str(LLM_PYTHON),
        "KB_INGEST__DEMO_DIR": str(demo), "HF_HUB_OFFLINE": "1",
        # The model's text when its citations support it, else quotes: tokens stream from vLLM and the
        # extractive replacement, badges and evidence all show in the browser.
        "KB_LLM__ANSWER_MODE": "auto",
    }  # fmt: skip
    log = home / "kb-up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up"], cwd=home, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{api_port}"
    try:
        try:
            wait_until_ready(proc, f"{url}/healthz", log, timeout_s=600, what="kb up", poll_s=2)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        found = ADMIN_KEY.findall(log.read_text())
        assert len(found) == 1, log.read_text()[-4000:]
        web = WebStack(url=url, key=found[0], env=env, proc=proc, home=home, log=log, docs=home / "docs")
        # The documents of groups a and b, through the CLI into the running stack (its worker ingests them).
        for group, files in (("a", A_DOCS), ("b", B_DOCS)):
            done = web.kb("ingest", "--acl", group, "--wait", *map(str, _write(web.docs / group, files)))
            assert done.returncode == 0, done.stderr.decode()[-3000:]
        yield web
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def browser(stack: WebStack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=ui_browser.CHROMIUM, args=ui_browser.CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, stack: WebStack) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    alerts: list[str] = []
    # A document's text that ran as script would open a dialog: that fails the test.
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    try:
        yield page
    finally:
        context.close()
    assert alerts == [], f"document text ran as script: {alerts}"
    assert not [u for u in urls if stack.key in u], "the key went into a URL"
    # The API's access log has paths only, and no path carries a key.
    assert stack.key not in stack.log.read_text()[stack.log.read_text().index(stack.key) + len(stack.key) :]


def cards(page: Any) -> Any:
    return last_answer(page).locator(".kb-card")


def answer_text(page: Any) -> str:
    """The last answer's own text, without its source cards (which quote the documents anyway)."""
    return str(
        last_answer(page).evaluate(
            "row => { const c = row.cloneNode(true); c.querySelectorAll('.kb-sources').forEach(e => e.remove());"
            " return c.innerText; }"
        )
    )


def test_a_wrong_key_shows_a_clear_message(stack: WebStack, page: Any) -> None:
    from playwright.sync_api import expect

    sign_in(page, stack.ui, "kb_0123456789ab_this-key-does-not-exist-at-all", expect_ok=False)
    expect(page.locator("#kb-signin-message")).to_contain_text("This key was not accepted", timeout=30_000)
    expect(page.locator("#kb-main")).to_be_hidden()
    shot(page, "01-wrong-key")


def test_admin_uploads_documents_and_watches_them_finish(stack: WebStack, page: Any) -> None:
    from playwright.sync_api import expect

    assert stack.has_route("post", "/documents"), "POST /documents is not on this branch"
    sign_in(page, stack.ui, stack.key)
    page.locator("button[role='tab']", has_text="Documents").click()
    for group, names in (("a", ["osprey-plan.md", "osprey-team.md"]), ("b", ["pier-notes.md"])):
        texts = {name: f"# {name}\n\nOsprey and pier facts for group {group}.\n" for name in names}
        files = _write(stack.home / "uploads" / group, texts)
        page.locator("#kb-upload-files input[type=file]").set_input_files([str(f) for f in files])
        page.locator("#kb-upload-groups textarea, #kb-upload-groups input").first.fill(group)
        page.locator("#kb-upload").click()
        expect(page.locator("#kb-job .kb-job")).to_have_attribute("data-state", "done", timeout=300_000)
        expect(page.locator("#kb-job")).to_contain_text(f"{len(names)} / {len(names)}")
    expect(page.locator("#kb-docs-table")).to_contain_text("osprey-plan.md", timeout=30_000)
    shot(page, "02-documents-upload")


def test_admin_asks_and_the_answer_streams_with_source_cards(stack: WebStack, page: Any) -> None:
    from playwright.sync_api import expect

    sign_in(page, stack.ui, stack.key)
    for tab in ("Chat", "Documents", "Keys", "Audit"):
        expect(page.locator("button[role='tab']", has_text=tab)).to_be_visible()
    send_question(page, FALCON_Q)
    watch = wait_answer(page)
    # Several DOM updates with a growing text before the finished answer replaced the streaming one.
    assert len(watch["lengths"]) >= 3 and watch["lengths"] == sorted(watch["lengths"]), watch
    titles = cards(page).locator(".kb-card-title").all_inner_texts()
    assert any("Project Falcon" in title for title in titles), titles
    expect(cards(page).first).to_contain_text("Falcon")
    if last_answer(page).locator(".kb-badge-extractive").count():
        # The tiny model's text had no supported claim: the answer quotes the plan, and its card marks the quote.
        text = answer_text(page)
        assert "14 May 2026" in text or "2.4 million" in text, text
        assert cards(page).locator("mark.kb-evidence").count() >= 1
    last_answer(page).evaluate("row => row.scrollIntoView({block: 'start'})")
    shot(page, "03-chat-admin")


def test_a_source_card_downloads_the_original(stack: WebStack, page: Any) -> None:
    assert stack.has_route("get", "/documents/{doc_id}/file"), "GET /documents/{doc_id}/file is not on this branch"
    sign_in(page, stack.ui, stack.key)
    send_question(page, FALCON_Q)
    wait_answer(page)
    card = cards(page).filter(has_text="Project Falcon Plan").first
    href = card.locator("a.kb-download").evaluate("a => a.href")
    assert "/ui/files?t=" in href and stack.key not in href
    got = httpx.get(href, timeout=60)
    assert got.status_code == 200, got.text
    assert got.content == A_DOCS["falcon-plan.md"].encode()


def test_thumbs_down_with_a_comment_is_recorded(stack: WebStack, page: Any) -> None:
    from playwright.sync_api import expect

    assert stack.has_route("post", "/feedback"), "POST /feedback is not on this branch"
    sign_in(page, stack.ui, stack.key)
    send_question(page, FALCON_Q)
    wait_answer(page)
    last_answer(page).locator("button[aria-label='Dislike']").click()
    page.locator("#kb-feedback-comment textarea").fill("the budget is missing")
    page.locator("#kb-feedback-send").click()
    expect(page.locator("#kb-feedback-status .kb-note-ok")).to_be_visible(timeout=30_000)
    shot(page, "04-feedback")
    rows = httpx.get(f"{stack.url}/admin/feedback", headers=stack.auth, timeout=30).json()
    items = rows.get("items", rows.get("entries", [])) if isinstance(rows, dict) else rows
    assert any(r.get("rating") == "down" and r.get("comment") == "the budget is missing" for r in items), rows


def test_an_employee_of_group_b_sees_no_group_a_documents(stack: WebStack, page: Any) -> None:
    from playwright.sync_api import expect

    created = httpx.post(f"{stack.url}/admin/keys", headers=stack.auth, timeout=30,
                         json={"name": "bea", "role": "employee", "groups": ["b"], "kbs": ["default"]})  # fmt: skip
    assert created.status_code == 201, created.text
    sign_in(page, stack.ui, created.json()["key"])
    expect(page.locator("#kb-who")).to_contain_text("bea")
    expect(page.locator("button[role='tab']", has_text="Documents")).to_have_count(0)
    expect(page.locator("button[role='tab']", has_text="Keys")).to_have_count(0)
    send_question(page, FALCON_Q)
    wait_answer(page)
    doc_ids = cards(page).evaluate_all("cs => cs.map(c => c.dataset.docId)")
    titles = " ".join(cards(page).locator(".kb-card-title").all_inner_texts())
    assert not set(doc_ids) & set(A_DOCS) and "Falcon" not in titles, (doc_ids, titles)
    shot(page, "05-chat-employee-b")


def test_a_hostile_title_renders_as_text(stack: WebStack, page: Any) -> None:
    from playwright.sync_api import expect

    sign_in(page, stack.ui, stack.key)
    send_question(page, "When does the cafeteria serve lunch?")
    wait_answer(page)
    title = cards(page).locator(".kb-card-title", has_text="img src=x").first
    expect(title).to_have_text(XSS)
    expect(title).to_be_visible()
    assert page.locator("img[src='x']").count() == 0
    title.scroll_into_view_if_needed()
    shot(page, "06-hostile-title")


CONCURRENT_QUESTIONS = [
    "How many days of annual leave do new employees get?",
    "When does the cafeteria serve lunch?",
    "How many days of annual leave can be carried over?",
    "What time does lunch end in the cafeteria?",
]


def test_twenty_sessions_stream_at_once(stack: WebStack, browser: Any) -> None:
    sessions = 20
    # One browser context per person: a browser opens at most six HTTP/1.1 connections to a host, and every
    # Gradio tab holds one open for its event stream, so twenty tabs of one context would queue behind that.
    contexts = [browser.new_context(viewport={"width": 1000, "height": 800}) for _ in range(sessions)]
    try:
        pages = []
        for context in contexts:
            page = context.new_page()
            sign_in(page, stack.ui, stack.key)
            pages.append(page)
        for i, page in enumerate(pages):
            page.evaluate(ui_browser.WATCH_ANSWER)
            page.locator("#kb-question textarea").fill(CONCURRENT_QUESTIONS[i % len(CONCURRENT_QUESTIONS)])
        # All sent within a few milliseconds of each other; each session's clock starts at its own click.
        ui_browser.send_together(pages)
        watches = [wait_answer(page, 600_000) for page in pages]
        shot(pages[-1], "07-session-20-of-20")
    finally:
        for context in contexts:
            context.close()
    ttft = sorted((w["first"] - w["start"]) / 1000 for w in watches)
    total = sorted((w["end"] - w["start"]) / 1000 for w in watches)
    spread = (max(w["start"] for w in watches) - min(w["start"] for w in watches)) / 1000
    report = {
        "sessions": sessions, "send_spread_s": round(spread, 3),
        "ttft_first_s": round(ttft[0], 2), "ttft_median_s": round(statistics.median(ttft), 2),
        "ttft_last_s": round(ttft[-1], 2), "total_first_s": round(total[0], 2),
        "total_median_s": round(statistics.median(total), 2), "total_last_s": round(total[-1], 2),
        "load_average_1m": os.getloadavg()[0],
    }  # fmt: skip
    ui_browser.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (ui_browser.SCREENSHOTS / "ui-concurrency.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    # No session waited for others' whole answers: every first token came before the median answer ended.
    # Answers run in turn would put the last first token behind nineteen whole answers, far beyond the
    # median. (Not the quickest answer: one short answer, a refusal say, ends in seconds. The first tokens
    # spread further than in the UI alone, tests/e2e/test_web_app_contract.py: vLLM on two CPU cores
    # prefills twenty prompts in turn. docs/BENCHMARKS.md has the numbers.)
    assert ttft[-1] < statistics.median(total), report


def test_with_the_model_server_stopped_answers_are_passages_with_a_badge(stack: WebStack, page: Any) -> None:
    from playwright.sync_api import expect

    # Runs last: vLLM does not come back in this module.
    llm = [p for p in psutil.Process(stack.proc.pid).children(recursive=True)
           if "vllm.entrypoints" in " ".join(p.cmdline())]  # fmt: skip
    assert llm, "no vLLM process under kb up"
    os.killpg(os.getpgid(llm[0].pid), signal.SIGKILL)
    port = int(stack.env["KB_LLM__PORT"])
    deadline = time.monotonic() + 30
    while port_open("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.5)
    sign_in(page, stack.ui, stack.key)
    send_question(page, FALCON_Q)
    wait_answer(page)
    expect(last_answer(page).locator(".kb-badge-degraded")).to_contain_text("Model unavailable")
    assert cards(page).count() >= 1
    # Still an answer: the plan's sentences, quoted with their sources.
    text = answer_text(page)
    assert "14 May 2026" in text or "2.4 million" in text, text
    assert page.locator(".kb-note-error").count() == 0
    shot(page, "08-model-down")

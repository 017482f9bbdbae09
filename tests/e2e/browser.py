"""What the web app's browser tests share: Chromium through Playwright, sign-in, and watching an answer
stream in the page itself (a MutationObserver, so that the timings are the browser's, not the test's)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
# Git-ignored (var/): what users would see at each step, for a person to look at.
SCREENSHOTS = ROOT / "var" / "screenshots"

# Installed before a question is sent: records when the first token shows, every length the answer
# takes while it streams, and when the finished answer replaces the streaming one.
WATCH_ANSWER = """() => {
  const chat = document.querySelector('#kb-chat');
  const w = {start: Date.now(), first: null, end: null, lengths: [], seenCursor: false};
  window.__kbWatch = w;
  const look = () => {
    const cursor = chat.querySelector('.kb-cursor');
    if (cursor) {
      w.seenCursor = true;
      const text = (cursor.parentElement.textContent || '').replace('\\u258d', '').trim();
      if (text.length > 0 && w.first === null) w.first = Date.now();
      if (w.lengths[w.lengths.length - 1] !== text.length) w.lengths.push(text.length);
    } else if (w.seenCursor && w.end === null) {
      w.end = Date.now();
      if (w.first === null) w.first = w.end;
      obs.disconnect();
    }
  };
  const obs = new MutationObserver(look);
  obs.observe(chat, {subtree: true, childList: true, characterData: true});
}"""

# Sends the question already typed at a given moment (ms since the epoch, the same clock in every tab), so
# that many sessions click together however long the test takes to reach each tab; each session's clock
# starts at its own click.
SEND_AT = """(at) => setTimeout(() => {
  window.__kbWatch.start = Date.now();
  document.querySelector('#kb-send').click();
}, Math.max(0, at - Date.now()))"""


def send_together(pages: list[Any], lead_ms: int = 3000) -> None:
    at = pages[0].evaluate("() => Date.now()") + lead_ms + 150 * len(pages)
    for page in pages:
        page.evaluate(SEND_AT, at)


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make setup` installs it as root (or: apt-get install chromium)")


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, ui_url: str, key: str, *, expect_ok: bool = True) -> None:
    from playwright.sync_api import expect

    page.goto(ui_url)
    page.locator("#kb-key input").wait_for(timeout=60_000)
    page.locator("#kb-key input").fill(key)
    page.locator("#kb-signin-button").click()
    if expect_ok:
        expect(page.locator("#kb-main")).to_be_visible(timeout=30_000)


def send_question(page: Any, question: str) -> None:
    page.evaluate(WATCH_ANSWER)
    box = page.locator("#kb-question textarea")
    box.fill(question)
    box.press("Enter")


def wait_answer(page: Any, timeout_ms: int = 240_000) -> dict[str, Any]:
    page.wait_for_function("() => window.__kbWatch && window.__kbWatch.end !== null", timeout=timeout_ms)
    watch: dict[str, Any] = page.evaluate("() => window.__kbWatch")
    return watch


def last_answer(page: Any) -> Any:
    """The last bot message of the conversation."""
    return page.locator("#kb-chat .message-row.bot-row").last

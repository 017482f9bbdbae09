"""Log lines for people at a terminal, JSON for everything else, and no jieba chatter in either."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from app.ops.logs import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_lines_are_readable_and_carry_their_fields(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("kb.access").info("request", extra={"path": "/ask", "status": 200})
    line = capsys.readouterr().err.strip()
    assert not line.startswith("{") and "info" in line
    assert line.endswith("kb.access: request path=/ask status=200"), line


def test_json_lines_parse(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("kb.access").info("request", extra={"path": "/ask"})
    entry = json.loads(capsys.readouterr().err.strip())
    assert (entry["logger"], entry["msg"], entry["path"]) == ("kb.access", "request", "/ask")


def test_auto_is_json_when_stderr_is_not_a_terminal(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "auto")  # captured: not a terminal
    logging.getLogger("kb").warning("hello")
    assert json.loads(capsys.readouterr().err.strip())["msg"] == "hello"


def test_jieba_debug_lines_are_dropped_even_after_jieba_resets_its_logger(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG", "text")
    jieba = logging.getLogger("jieba")
    jieba.setLevel(logging.DEBUG)  # what `import jieba` does
    jieba.debug("Building prefix dict from the default dictionary ...")
    jieba.warning("a real problem")
    err = capsys.readouterr().err
    assert "prefix dict" not in err and "a real problem" in err

"""The CLI in-process against a temporary KB_HOME (real models and Milvus Lite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.integration.conftest import write

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KB_HOME", str(tmp_path / "var"))
    return tmp_path


def test_ingest_then_search_with_json_output(home: Path) -> None:
    folder = home / "docs"
    write(folder / "vpn.md", "# VPN\n\nConnect with the WireGuard client; VPN access expires after 90 days.\n")
    write(folder / "bad.txt", "")
    result = CliRunner().invoke(cli, ["ingest", "--wait", "--json", str(folder)])
    assert result.exit_code == 1  # one file failed
    report = json.loads(result.stdout)
    status = {d["doc_id"]: d["status"] for d in report["documents"]}
    assert status == {"vpn.md": "indexed", "bad.txt": "failed"}

    again = CliRunner().invoke(cli, ["ingest", "--wait", "--json", str(folder / "vpn.md")])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["documents"][0]["status"] == "unchanged"

    found = CliRunner().invoke(cli, ["search", "--json", "when does VPN access expire"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["doc_id"] == "vpn.md" and "90 days" in hits[0]["text"]


def test_missing_path_is_a_clear_error(home: Path) -> None:
    result = CliRunner().invoke(cli, ["ingest", str(home / "nope")])
    assert result.exit_code == 1
    assert "no such file or folder" in result.output


def test_bad_mode_is_a_usage_error(home: Path) -> None:
    result = CliRunner().invoke(cli, ["search", "--mode", "fuzzy", "x"])
    assert result.exit_code == 2
    assert "--mode" in result.output


def test_serve_llm_starts_nothing_when_an_external_endpoint_is_configured(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KB_LLM__BASE_URL", "http://gpu-cluster:8000/v1")
    result = CliRunner().invoke(cli, ["serve", "llm"])
    assert result.exit_code == 1
    assert "KB_LLM__BASE_URL is set" in result.output and "starts none" in result.output
    assert not (home / "var" / "logs" / "vllm.log").exists()

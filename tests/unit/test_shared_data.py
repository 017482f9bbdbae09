"""tests/conftest.py::shared_eval: shared evaluation data that is missing fails a test under CI and skips it
elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.conftest
from tests.conftest import shared_eval


@pytest.mark.parametrize("ci", ["true", "TRUE", " True "])
def test_missing_data_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str) -> None:
    monkeypatch.setattr(tests.conftest, "SHARED_EVAL", tmp_path / "eval")
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"xquad_en/qa\.jsonl is missing.*CI=true"):
        shared_eval("xquad_en", "qa.jsonl")


@pytest.mark.parametrize("ci", [None, "", "false", "1"])
def test_missing_data_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str | None) -> None:
    monkeypatch.setattr(tests.conftest, "SHARED_EVAL", tmp_path / "eval")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=r"docs_formats is missing \(shared evaluation data"):
        shared_eval("docs_formats")


@pytest.mark.parametrize("ci", ["true", "false"])
def test_present_data_is_returned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str) -> None:
    (tmp_path / "eval" / "scifact").mkdir(parents=True)
    (tmp_path / "eval" / "scifact" / "qa.jsonl").write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(tests.conftest, "SHARED_EVAL", tmp_path / "eval")
    monkeypatch.setenv("CI", ci)
    assert shared_eval("scifact") == tmp_path / "eval" / "scifact"
    assert shared_eval("scifact", "qa.jsonl").read_text(encoding="utf-8") == "{}\n"


def test_the_default_root_is_beside_the_checkout() -> None:
    assert Path(tests.conftest.__file__).resolve().parents[2] / "shared" / "eval" == tests.conftest.SHARED_EVAL

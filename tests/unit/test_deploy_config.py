"""docker-compose.yml cannot be run here (no Docker engine); check what can be checked: it parses,
its services are wired together, and every KB_ variable it sets is a real setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.settings import Settings
from tests.conftest import ROOT


def compose() -> dict[str, dict[str, dict[str, object]]]:
    data: dict[str, dict[str, dict[str, object]]] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_are_wired_together() -> None:
    services = compose()["services"]
    assert {"milvus", "vllm", "embed", "postgres", "kb"} <= set(services)
    for name, service in services.items():
        for dep in service.get("depends_on", []):  # type: ignore[union-attr]
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_kb_environment_names_real_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = compose()["services"]["kb"]["environment"]
    assert isinstance(env, dict)
    assert {k for k in env if not k.startswith("KB_")} <= {"HF_HOME"}
    env = {k: v for k, v in env.items() if k.startswith("KB_")}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value).replace("${KB_POSTGRES_PASSWORD:-change-me}", "pw"))
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.milvus.uri == "http://milvus:19530"
    assert s.llm_base_url == "http://vllm:8000/v1"
    assert s.embedding.model == "BAAI/bge-m3"
    assert s.embedding.base_url == "http://embed:80/v1"
    assert s.reranker.model == "BAAI/bge-reranker-v2-m3"
    assert s.database_url.startswith("postgresql+psycopg://kb:pw@postgres")
    assert s.home == Path("/var/lib/kb")
    # Every variable landed on a field: a misspelt section or field would be silently ignored.
    fields = {f"KB_{sec.upper()}__{name.upper()}" for sec, model in s if hasattr(model, "model_fields")
              for name in type(model).model_fields}  # fmt: skip
    fields |= {f"KB_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields


def test_the_image_copies_every_package_the_distribution_ships() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    assert packages and packages <= copied, f"not copied into the image: {sorted(packages - copied)}"

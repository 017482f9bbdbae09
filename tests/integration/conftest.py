from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.container import Container
from app.settings import Settings


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A fresh knowledge base in a temporary KB_HOME: real Milvus Lite, real MiniLM, real SQLite."""
    home = tmp_path_factory.mktemp("kbhome")
    c = Container(Settings(home=home, models_dir=home / "models"))
    yield c
    c.store._client.close()


@pytest.fixture(scope="module")
def demo_home(container: Container) -> Container:
    from tests.conftest import DATA

    results = container.ingest.ingest_paths([DATA], kb="default")
    failed = [r for r in results if r.status != "indexed"]
    assert not failed, failed
    return container


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path

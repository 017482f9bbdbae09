"""Throw-away kb instances for evaluation runs: never the user's Milvus or database."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import SecretStr

from app.container import Container
from app.settings import Settings


def scratch_settings(settings: Settings, home: Path) -> Settings:
    """The same models and retrieval settings, with a throw-away KB_HOME and an embedded Milvus Lite."""
    return settings.model_copy(
        update={
            "home": home,
            "milvus": settings.milvus.model_copy(update={"uri": "", "token": SecretStr("")}),
            "database": settings.database.model_copy(update={"url": SecretStr("")}),
        },
        deep=True,
    )


@contextmanager
def scratch_container(settings: Settings, prefix: str = "kb-eval-") -> Iterator[tuple[Container, Path]]:
    """A Container on a temporary KB_HOME (removed afterwards) and that folder, for work files."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        container = Container(scratch_settings(settings, Path(tmp)))
        try:
            yield container, Path(tmp)
        finally:
            # Only if it was opened: closing must not start a Milvus Lite just to stop it.
            if "store" in container.__dict__:
                container.store.close()

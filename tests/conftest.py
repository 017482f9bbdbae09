from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
SHARED_EVAL = ROOT.parent / "shared" / "eval"

# Models are offline here; a test must never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")


@pytest.fixture(autouse=True)
def _no_kb_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their own settings; a developer's KB_* variables must not leak in."""
    for key in list(os.environ):
        if key.startswith("KB_"):
            monkeypatch.delenv(key)

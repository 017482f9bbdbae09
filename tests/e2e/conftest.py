"""What the end-to-end tests share: where vLLM's Python and the prepared SmolLM2 are, and a vLLM server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.procs import free_port
from serving.launcher import LLMServer, LLMServerConfig
from tests.conftest import ROOT

LLM_PYTHON = ROOT / ".venv-llm" / "bin" / "python"
# scripts/setup.sh prepares the model under var/models; KB_MODELS_DIR points elsewhere (read here, at import,
# because every test runs with the KB_* variables removed).
MODELS_DIR = Path(os.environ.get("KB_MODELS_DIR") or ROOT / "var" / "models").expanduser().resolve()
MODEL = MODELS_DIR / "smollm2-135m-instruct"
SERVED_NAME = "kb-llm"


def require_llm() -> None:
    """The e2e tests fail, not skip, without vLLM and the model: they are part of `make test`."""
    if not LLM_PYTHON.exists() or not MODEL.is_dir():
        pytest.fail(f"{LLM_PYTHON} or {MODEL} missing: run `make setup` (the e2e tests need vLLM and SmolLM2)")


def start_llm(home: Path) -> LLMServer:
    require_llm()
    server = LLMServer(
        LLMServerConfig(
            python=str(LLM_PYTHON), model=str(MODEL), served_model_name=SERVED_NAME, host="127.0.0.1",
            port=free_port(), max_model_len=2048, dtype="auto", kv_cache_bytes=268_435_456,
            tensor_parallel_size=1, gpu_memory_utilization=0.9, cache_root=home / "vllm-cache",
            log_path=home / "vllm.log", device="cpu",
        )
    )  # fmt: skip
    try:
        server.start(timeout_s=600)
    except BaseException:  # a failed or interrupted start must not leave vLLM running
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServer]:
    """vLLM serving SmolLM2 on the CPU, one per test module (a module may stop it to test degraded mode)."""
    server = start_llm(tmp_path_factory.mktemp("llm"))
    try:
        yield server
    finally:
        server.stop()

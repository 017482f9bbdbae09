"""The `kb` command line. Commands that print results accept --json (one JSON document on stdout).

Each command group lives in its own module; importing them here registers their commands on `cli`.
"""

from __future__ import annotations

import sys

import typer

from app.cli import (  # noqa: F401  (registers commands)
    bench_e2e,
    bench_ingest,
    bench_retrieval,
    config_models,
    eval,
    eval_refusal,
    ingest,
    query,
    serve,
)
from app.cli._common import cli

__all__ = ["cli", "main"]


def main() -> None:
    from ingest.loaders import LoadError
    from retrieval.milvus_connect import MilvusUnavailable
    from retrieval.store import StoreError

    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
    except (MilvusUnavailable, StoreError, LoadError) as exc:
        # Expected operational failures get one line, not a traceback.
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

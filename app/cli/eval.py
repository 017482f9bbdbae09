"""`kb eval retrieval` and `kb eval qa`: measured retrieval and answer quality on evaluation sets."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import SecretStr

from app.cli._common import eval_cli, fail, load_settings
from app.settings import Settings

DatasetArg = Annotated[Path, typer.Option("--dataset", help="Data set folder.", exists=False)]
JsonFileOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")]  # noqa: UP045


def scratch_settings(settings: Settings, home: Path) -> Settings:
    """The same models and retrieval settings, with a throw-away KB_HOME and an embedded Milvus Lite."""
    return settings.model_copy(
        update={
            "home": home,
            "milvus": settings.milvus.model_copy(update={"uri": "", "token": SecretStr("")}),
            "database": settings.database.model_copy(update={"url": SecretStr("")}),
        },
        deep=True,
    )


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        typer.echo(f"wrote {path}", err=True)


@eval_cli.command("retrieval")
def eval_retrieval(
    dataset: DatasetArg,
    modes: Annotated[str, typer.Option(help="Comma-separated: bm25, dense, hybrid, rerank, langchain.")] = (
        "bm25,dense,hybrid,rerank,langchain"
    ),
    json_file: JsonFileOpt = None,
) -> None:
    """nDCG@10, Recall@10/@100, MRR@10 and query latency per mode on a BEIR-layout data set."""
    from app.container import Container
    from retrieval.evaluate import RETRIEVAL_MODES, DatasetError, evaluate_retrieval, load_beir

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in RETRIEVAL_MODES]
    if unknown or not wanted:
        fail(f"--modes takes {', '.join(RETRIEVAL_MODES)}; got {modes!r}", 2)
    try:
        data = load_beir(dataset)
    except (DatasetError, OSError) as exc:
        fail(str(exc), 2)
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="kb-eval-") as tmp:
        container = Container(scratch_settings(settings, Path(tmp)))
        try:
            report = evaluate_retrieval(
                data, name=dataset.name, pipeline=container.query, store=container.store,
                embedder=container.embedder, modes=wanted, cache_dir=settings.home / "cache",
                work_dir=Path(tmp), progress=lambda msg: typer.echo(msg, err=True),
            )  # fmt: skip
        finally:
            container.store.close()
    r, m = settings.retrieval, settings.milvus
    report.settings = {
        "embedding_model": settings.embedding.model, "analyzer": m.analyzer, "stop_words": m.stop_words,
        "fusion": r.fusion, "dense_weight": r.dense_weight, "rrf_k": r.rrf_k, "search_ef": m.search_ef,
        "reranker": settings.reranker.model if container.query.has_reranker else None,
    }  # fmt: skip
    typer.echo(report.table())
    write_json(json_file, report.as_json())


@eval_cli.command("qa")
def eval_qa(
    dataset: DatasetArg,
    json_file: JsonFileOpt = None,
    llm_limit: Annotated[int, typer.Option(min=0, help="Ask the model at most this many questions.")] = 200,
    compare: Annotated[str, typer.Option(help="Also report hits per requested mode, e.g. bm25,hybrid.")] = "",
) -> None:
    """Document hit@1/@5 and, with the model server up, answer EM/F1, refusal accuracy, citation precision."""
    from app.container import Container
    from app.qa_eval import evaluate_qa, llm_reachable
    from retrieval.evaluate import DatasetError, load_qa

    modes = [m.strip() for m in compare.split(",") if m.strip()]
    if any(m not in ("dense", "bm25", "hybrid") for m in modes):
        fail(f"--compare takes dense, bm25, hybrid; got {compare!r}", 2)
    try:
        docs, items = load_qa(dataset)
    except (DatasetError, OSError, KeyError) as exc:
        fail(str(exc), 2)
    settings = load_settings()
    problem = llm_reachable(settings.llm_base_url, settings.llm.api_key.get_secret_value()) if llm_limit else None
    with tempfile.TemporaryDirectory(prefix="kb-eval-") as tmp:
        container = Container(scratch_settings(settings, Path(tmp)))
        try:
            report = evaluate_qa(
                name=dataset.name, docs=docs, items=items, ingest=container.ingest, query=container.query,
                answers=container.answers, llm_problem=problem if llm_limit else "not asked (--llm-limit 0)",
                llm_limit=llm_limit, compare=modes,  # type: ignore[arg-type]
                progress=lambda msg: typer.echo(msg, err=True),
            )  # fmt: skip
        except RuntimeError as exc:
            fail(str(exc))
        finally:
            container.store.close()
    typer.echo(report.table())
    write_json(json_file, report.as_json())

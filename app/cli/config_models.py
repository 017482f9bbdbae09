"""`kb config` and `kb models`."""

from __future__ import annotations

import json

from app.cli._common import JsonOpt, config_cli, emit, fail, load_settings, models_cli


@config_cli.command("show")
def config_show(as_json: JsonOpt = False) -> None:
    """Print the effective settings, secrets masked."""
    from app.ops.settings_view import masked

    data = masked(load_settings())
    emit(data, as_json, json.dumps(data, ensure_ascii=False, indent=2))


# -- models -----------------------------------------------------------------------------------
@models_cli.command("prepare")
def models_prepare(as_json: JsonOpt = False) -> None:
    """Build the local default chat model folder and check the embedding model loads."""
    from retrieval.embedder import resolve_model_location
    from serving.models import ModelPrepareError, prepare_default_llm

    settings = load_settings()
    try:
        llm = str(prepare_default_llm(settings.models_path)) if not settings.llm.model else settings.llm.model
    except ModelPrepareError as exc:
        fail(str(exc))
    embedding = resolve_model_location(settings.embedding.model)
    emit({"llm": llm, "embedding": embedding}, as_json, f"llm: {llm}\nembedding: {embedding}")

"""The effective settings as plain JSON with every secret masked: for `kb config show` and the settings
digest that feedback is filed under."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, SecretStr

from app.settings import Settings


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain JSON, with every secret replaced by '***'."""
    data: dict[str, Any] = json.loads(settings.model_dump_json())
    _mask_secrets(settings, data)
    data["database"]["effective_url"] = "***" if settings.database.url.get_secret_value() else settings.database_url
    data["llm"]["effective_base_url"] = settings.llm_base_url
    return data


def _mask_secrets(model: BaseModel, data: dict[str, Any]) -> None:
    # pydantic already dumps SecretStr as '**********'; this makes the mask uniform, keeps empty
    # secrets visibly empty, and covers lists of secrets.
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            data[name] = "***" if value.get_secret_value() else ""
        elif isinstance(value, list) and value and isinstance(value[0], SecretStr):
            data[name] = ["***" for _ in value]
        elif isinstance(value, BaseModel):
            _mask_secrets(value, data[name])

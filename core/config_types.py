"""Types for settings read from the environment."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import BeforeValidator
from pydantic_settings import NoDecode


def _text_list(value: object) -> object:
    """A list setting from the environment: a JSON array, or plain text separated by commas
    (`KB_SECURITY__SENSITIVE_TERMS=project falcon, merger`); an empty string is an empty list."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON array ({exc.msg}); or give the items separated by commas") from exc
    return [item.strip() for item in text.split(",") if item.strip()]


# Read from the environment as text (NoDecode), then split by _text_list.
TextList = Annotated[list[str], NoDecode, BeforeValidator(_text_list)]

"""The rules for ACL groups and tags given by people (CLI, API): checked once, before anything is stored."""

from __future__ import annotations

from collections.abc import Sequence

from core.names import GROUP_NAME, TAG


class InvalidAccess(ValueError):
    """A group or tag kb cannot store or match."""


def check_labels(values: Sequence[str], kind: str) -> list[str]:
    """Groups (kind "group") or tags ("tag"), checked and without duplicates, in the order given."""
    rule = GROUP_NAME if kind == "group" else TAG
    out: list[str] = []
    for value in values:
        if not rule.match(value):
            if kind == "group":
                raise InvalidAccess(f"group {value!r} must be 1-128 letters, digits or _ . : -")
            raise InvalidAccess(f"tag {value!r} must be 1-128 characters without commas or control characters")
        if value not in out:
            out.append(value)
    return out

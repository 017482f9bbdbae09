"""Evaluation reads every document of its own scratch knowledge bases: trusted local code, so it states
that explicitly instead of relying on a default."""

from __future__ import annotations

from core.types import Access, SearchFilter

EVERYTHING = SearchFilter(access=Access.everything())

from __future__ import annotations

import pytest

from core.types import Access, SearchFilter
from retrieval.store import build_filter, literal


def test_typed_values_become_quoted_literals() -> None:
    expr = build_filter(SearchFilter(doc_ids=["a.md"], tags=["hr"], access=Access.groups(["staff"])))
    assert expr == (
        'doc_id in ["a.md"] and array_contains_any(tags, ["hr"]) and '
        'array_contains_any(acl_groups, ["staff", "public"])'
    )


@pytest.mark.parametrize("evil", ['x" or 1==1 or "', "x] or true or [", 'a\\" or doc_id != "', "') or ('1'=='1"])
def test_injection_attempts_stay_inside_the_literal(evil: str) -> None:
    lit = literal(evil)
    # The value decodes back to itself: quotes and backslashes are escaped, so nothing leaks out.
    import json

    assert json.loads(lit) == evil
    assert lit.startswith('"') and lit.endswith('"')
    inner = lit[1:-1].replace('\\"', "").replace("\\\\", "")
    assert '"' not in inner


def test_control_characters_are_refused() -> None:
    with pytest.raises(ValueError):
        literal("a\nb")


def test_only_trusted_code_gets_no_acl_clause_and_no_groups_means_public_only() -> None:
    assert build_filter(SearchFilter(access=Access.everything())) == ""
    assert build_filter(SearchFilter(access=Access.groups([]))) == 'array_contains_any(acl_groups, ["public"])'
    assert build_filter(SearchFilter(access=Access.public_only())) == 'array_contains_any(acl_groups, ["public"])'


def test_access_is_required_and_has_no_unrestricted_default() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SearchFilter()  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SearchFilter(access=None)  # type: ignore[arg-type]
    assert not Access.groups(["hr"]).can_read([]) and Access.everything().can_read([])

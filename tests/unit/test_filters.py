from __future__ import annotations

import pytest

from core.types import SearchFilter
from retrieval.store import build_filter, literal


def test_typed_values_become_quoted_literals() -> None:
    expr = build_filter(SearchFilter(doc_ids=["a.md"], tags=["hr"], acl_groups=["staff"]))
    assert expr == (
        'doc_id in ["a.md"] and array_contains_any(tags, ["hr"]) and '
        '(array_length(acl_groups) == 0 or array_contains_any(acl_groups, ["staff"]))'
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


def test_no_acl_means_no_acl_clause_but_empty_groups_means_public_only() -> None:
    assert build_filter(SearchFilter()) == ""
    assert build_filter(SearchFilter(acl_groups=[])) == "array_length(acl_groups) == 0"

"""`kb search` and `kb ask`: query the knowledge base from a terminal."""

from __future__ import annotations

import asyncio
from typing import Annotated, Optional

import typer

from app.cli._common import JsonOpt, KbOpt, cli, emit, fail, load_settings
from core.types import Access, SearchFilter, SearchMode

# The CLI runs on the server's machine with its files, so it reads as admin unless told to read as a group.
AsGroupsOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--as-groups", help="Read only what members of these groups (comma-separated) may read."),
]


def _access(as_groups: str | None) -> Access:
    if as_groups is None:
        return Access.everything()
    return Access.groups(g.strip() for g in as_groups.split(",") if g.strip())


@cli.command()
def search(  # noqa: PLR0917  (Typer options)
    query: str,
    kb: KbOpt = "default",
    top_k: Annotated[int, typer.Option(min=1, max=50)] = 5,
    mode: Annotated[Optional[str], typer.Option(help="dense, bm25 or hybrid")] = None,  # noqa: UP045
    as_groups: AsGroupsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the ranked chunks for a query, without calling the model."""
    from app.answers.models import SearchResponse
    from app.container import Container

    container = Container(load_settings())
    r = container.query.search(
        query, flt=SearchFilter(access=_access(as_groups)), kb=kb, top_k=top_k, mode=_search_mode(mode)
    )
    response = SearchResponse.from_retrieval(query, r)
    human = "\n\n".join(
        f"{h.rank}. [{h.score:.4f} {h.score_kind}] {h.title} ({h.doc_id}"
        + (f", page {h.page}" if h.page else "")
        + f")\n   {' '.join(h.text.split())[:300]}"
        for h in response.hits
    )
    emit(response.model_dump(), as_json, human or "no results")


def _search_mode(value: str | None) -> SearchMode | None:
    modes: dict[str, SearchMode] = {"dense": "dense", "bm25": "bm25", "hybrid": "hybrid"}
    if value is None:
        return None
    if value not in modes:
        fail("--mode must be dense, bm25 or hybrid", 2)
    return modes[value]


@cli.command()
def ask(
    question: str,
    kb: KbOpt = "default",
    top_k: Annotated[Optional[int], typer.Option(min=1, max=50)] = None,  # noqa: UP045
    as_groups: AsGroupsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from the knowledge base, with citations."""
    from app.answers.service import Question
    from app.container import Container

    if not question.strip():
        fail("the question is empty", 2)
    container = Container(load_settings())
    answer = asyncio.run(container.answers.ask(Question(text=question, access=_access(as_groups), kb=kb, top_k=top_k)))
    lines = [answer.answer, ""]
    if answer.degraded:
        lines.insert(0, f"[degraded] {answer.message}")
    elif answer.extractive:
        lines.insert(0, f"[extractive] {answer.message}")
    lines += [
        f"[{c.index}] {c.title} ({c.doc_id}" + (f", page {c.page}" if c.page else "") + ")" for c in answer.citations
    ]
    emit(answer.model_dump(), as_json, "\n".join(lines).strip())

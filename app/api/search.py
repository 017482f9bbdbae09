"""POST /search: the ranked chunks for a query, without the model."""

from __future__ import annotations

from fastapi import APIRouter

from app.answering import Question
from app.auth.deps import Searcher
from app.deps import ContainerDep
from app.schemas import SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse)
async def search(body: SearchRequest, container: ContainerDep, caller: Searcher) -> SearchResponse:
    caller.require_kb(body.kb)
    retrieval = await container.answers.retrieve(
        Question(text=body.query, access=caller.access, kb=body.kb, top_k=body.top_k, mode=body.mode)
    )
    container.metrics.observe_timings("search", retrieval.timings)
    return SearchResponse.from_retrieval(body.query, retrieval)

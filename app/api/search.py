"""POST /search: the ranked chunks for a query, without the model."""

from __future__ import annotations

from fastapi import APIRouter

from app.answering import Question
from app.deps import ContainerDep
from app.schemas import SearchRequest, SearchResponse
from app.security import CallerGroups

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse)
async def search(body: SearchRequest, container: ContainerDep, groups: CallerGroups) -> SearchResponse:
    retrieval = await container.answers.retrieve(
        Question(text=body.query, kb=body.kb, top_k=body.top_k, mode=body.mode, acl_groups=groups)
    )
    return SearchResponse.from_retrieval(body.query, retrieval)

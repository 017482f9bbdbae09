"""POST /search: the ranked chunks for a query, without the model."""

from __future__ import annotations

from fastapi import APIRouter

from app.answering import Question
from app.deps import ContainerDep
from app.schemas import SearchHit, SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse)
async def search(body: SearchRequest, container: ContainerDep) -> SearchResponse:
    retrieval = await container.answers.retrieve(
        Question(text=body.query, kb=body.kb, top_k=body.top_k, mode=body.mode)
    )
    return SearchResponse(
        query=body.query,
        mode=retrieval.mode,
        language=retrieval.language,
        hits=[
            SearchHit(
                rank=i + 1,
                score=h.score,
                score_kind=h.score_kind,
                doc_id=h.chunk.doc_id,
                title=h.chunk.title,
                source=h.chunk.source,
                page=h.chunk.page,
                section=h.chunk.section,
                chunk_id=h.chunk.chunk_id,
                text=h.chunk.text,
            )
            for i, h in enumerate(retrieval.hits)
        ],
        timings=retrieval.timings,
    )

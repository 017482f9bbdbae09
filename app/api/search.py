"""POST /search: the ranked chunks for a query, without the model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.answering import Question
from app.audit import Action, QuestionAudit
from app.auth.deps import Searcher
from app.deps import ContainerDep
from app.limits import check_question
from app.schemas import SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse)
async def search(request: Request, body: SearchRequest, container: ContainerDep, caller: Searcher) -> SearchResponse:
    audit = QuestionAudit.of_request(request, Action.search, kb=body.kb, question=body.query)
    caller.require_kb(body.kb)
    check_question(body.query, [], request.app.state.settings.limits, field="query")
    await audit.refuse_sensitive(container.sensitive, body.query)
    retrieval = await container.answers.retrieve(
        Question(text=body.query, access=caller.access, kb=body.kb, top_k=body.top_k, mode=body.mode)
    )
    container.metrics.observe_timings("search", retrieval.timings)
    response = SearchResponse.from_retrieval(body.query, retrieval)
    await audit.record(docs=list(dict.fromkeys(hit.doc_id for hit in response.hits)))
    return response

"""POST /search: the ranked chunks for a query, without the model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.access.deps import Searcher
from app.answers.audit import QuestionAudit
from app.answers.models import SearchRequest, SearchResponse
from app.answers.service import Question
from app.audit.trail import Action
from app.deps import ContainerDep
from app.ops.limits import check_question

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

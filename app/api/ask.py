"""POST /ask: a grounded answer with citations."""

from __future__ import annotations

from fastapi import APIRouter

from app.answering import Question
from app.deps import ContainerDep
from app.schemas import AskRequest
from retrieval.types import Answer

router = APIRouter(tags=["ask"])


@router.post("/ask", response_model=Answer)
async def ask(body: AskRequest, container: ContainerDep) -> Answer:
    question = Question(text=body.question, kb=body.kb, top_k=body.top_k, mode=body.mode, history=body.history)
    return await container.answers.ask(question)

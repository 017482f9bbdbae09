"""The MCP tools and resources of kb (app/integrations/mcp/server.py serves them): search, ask, list and read
documents, and the knowledge bases as resources. Each tool checks the caller's permission and knowledge
base exactly as the HTTP routes do and reads with the caller's access; tools and resources are listed per
caller."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import mcp_types as types
from anyio import to_thread
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.access.principal import Principal
from app.access.roles import Permission
from app.answers.audit import QuestionAudit
from app.answers.gate import Asking, Gate
from app.answers.models import AskRequest, HistoryMessage, SearchRequest
from app.answers.service import Question
from app.audit.trail import Action, Actor
from app.container import Container
from app.errors import KBError, NotFound
from app.ops.limits import check_question
from core.names import KB_NAME_PATTERN
from core.types import Chunk, ScoredChunk, SearchMode
from ingest.registry import DocumentRow, KnowledgeBase

KB_LIST_URI = "kb://knowledge-bases"
KB_URI_PREFIX = f"{KB_LIST_URI}/"

_KB = Field("default", pattern=KB_NAME_PATTERN, description="knowledge base name (see the kb:// resources)")


@dataclass(frozen=True)
class ToolCall:
    caller: Principal
    gate: Gate
    actor: Actor


class SearchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000, description="what to look for, in natural language")
    kb: str = _KB
    top_k: int | None = Field(None, ge=1, le=50, description="how many passages (default: the server's)")
    mode: SearchMode | None = Field(None, description="dense, bm25 or hybrid (default: the server's)")


class AskArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=4000)
    kb: str = _KB
    history: list[HistoryMessage] = Field(
        default_factory=list,
        description="the conversation so far, oldest first: a follow-up question is read in its light",
    )


class ListDocumentsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kb: str = _KB
    query: str | None = Field(None, max_length=200, description="only documents whose title or id contains this")


class GetDocumentArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    doc_id: str = Field(min_length=1, max_length=512, description="a doc_id from search or list_documents")
    kb: str = _KB
    version: int | None = Field(None, ge=1, description="default: the current version")


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


# -- the tools ----------------------------------------------------------------------------------------


class KbTools:
    """What the MCP tools and resources do, for one caller at a time."""

    def __init__(self, container: Container) -> None:
        self._c = container

    # listing ---------------------------------------------------------------------------------------
    def knowledge_bases(self, caller: Principal) -> list[KnowledgeBase]:
        return [kb for kb in self._c.registry.knowledge_bases() if caller.may_use(kb.name)]

    def tools(self, caller: Principal) -> list[types.Tool]:
        kbs = self.knowledge_bases(caller)
        holds = "; ".join(f"{kb.name!r}: {kb.description or 'no description'}" for kb in kbs) or "none"
        about = f" Knowledge bases this key may use ({{kb}} argument, default 'default'): {holds}."
        read_only = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
        offered = [
            (Permission.search, types.Tool(
                name="search", input_schema=_schema(SearchArgs), annotations=read_only,
                description="Search company documents for passages relevant to a query. Returns ranked passages "
                "(title, page, snippet, doc_id, score), only from documents this key may read." + about,
            )),
            (Permission.ask, types.Tool(
                name="ask", input_schema=_schema(AskArgs), annotations=read_only,
                description="Answer a question from company documents. The answer cites its sources with [n] "
                "markers; `citations` lists them (title, page, doc_id, snippet). Refuses when the documents do "
                "not hold the answer." + about,
            )),
            (Permission.read_documents, types.Tool(
                name="list_documents", input_schema=_schema(ListDocumentsArgs), annotations=read_only,
                description="List the documents this key may read in a knowledge base (doc_id, title, version, "
                "tags), optionally only those whose title or id contains `query`." + about,
            )),
            (Permission.read_documents, types.Tool(
                name="get_document", input_schema=_schema(GetDocumentArgs), annotations=read_only,
                description="The full text of one document (by doc_id from search or list_documents)." + about,
            )),
        ]  # fmt: skip
        return [tool for permission, tool in offered if caller.may(permission)]

    def input_schema(self, name: str) -> dict[str, Any] | None:
        model = _ARGS.get(name)
        return _schema(model) if model is not None else None

    # calling ---------------------------------------------------------------------------------------
    async def call(self, call: ToolCall, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """A tool's result, or its refusal as an error result the model can read (MCP's convention for
        errors of the tool, as opposed to errors of the protocol). Each call counts against the key's
        request rate like an HTTP request does."""
        handler = {
            "search": self.search, "ask": self.ask, "list_documents": self.list_documents,
            "get_document": self.get_document,
        }.get(name)  # fmt: skip
        if handler is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {name!r}")
        try:
            await to_thread.run_sync(call.gate.limiter.hit_request, call.caller, call.actor.ip or None)
            result = await handler(call, arguments)
        except ValidationError as exc:
            return _error(_validation_message(exc))
        except KBError as exc:
            return _error(exc.message)
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(result, ensure_ascii=False, default=str))],
            structured_content=result,
        )

    async def search(self, call: ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
        caller = call.caller
        caller.require(Permission.search)
        args = SearchArgs.model_validate(arguments)
        # /search's own request model and checks: the same limits, filter and audit row as the HTTP route.
        body = SearchRequest(query=args.query, kb=args.kb, top_k=args.top_k, mode=args.mode)
        audit = QuestionAudit(self._c.audit, call.actor, Action.search, kb=body.kb, question=body.query)
        caller.require_kb(body.kb)
        check_question(body.query, [], self._c.settings.limits, field="query")
        await audit.refuse_sensitive(self._c.sensitive, body.query)
        retrieval = await self._c.answers.retrieve(
            Question(text=body.query, access=caller.access, kb=body.kb, top_k=body.top_k, mode=body.mode)
        )
        hits = [_hit(i, h) for i, h in enumerate(retrieval.hits, 1)]
        await audit.record(docs=list(dict.fromkeys(h.chunk.doc_id for h in retrieval.hits)))
        return {"query": body.query, "kb": body.kb, "hits": hits}

    async def ask(self, call: ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
        caller = call.caller
        caller.require(Permission.ask)
        args = AskArgs.model_validate(arguments)
        body = AskRequest(question=args.question, kb=args.kb, history=args.history)
        history = [m.chat() for m in body.history]
        # The same gate as /ask and /v1/chat/completions, and the same reading of a follow-up.
        asking = Asking(call.gate, caller, actor=call.actor)
        await asking.admit(kb=body.kb, question=body.question, history=history)
        answer = await asking.answer(Question(text=body.question, access=caller.access, kb=body.kb, history=history))
        return {
            "answer": answer.answer,
            "citations": [c.model_dump() for c in answer.citations],
            "sources": [c.model_dump() for c in answer.sources],
            "answer_id": answer.answer_id, "refused": answer.refused, "degraded": answer.degraded,
            "grounded": answer.grounded, "message": answer.message,
        }  # fmt: skip

    async def list_documents(self, call: ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
        caller = call.caller
        caller.require(Permission.read_documents)
        args = ListDocumentsArgs.model_validate(arguments)
        caller.require_kb(args.kb)
        rows = await to_thread.run_sync(lambda: self._c.registry.documents(args.kb))
        needle = (args.query or "").casefold()
        documents = [
            _document_entry(row)
            for row in rows
            if row.status == "ready"
            and caller.access.can_read(row.acl_groups)
            and (needle in row.title.casefold() or needle in row.doc_id.casefold())
        ]
        return {"kb": args.kb, "documents": documents}

    async def get_document(self, call: ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
        caller = call.caller
        caller.require(Permission.read_documents)
        args = GetDocumentArgs.model_validate(arguments)
        caller.require_kb(args.kb)
        return await to_thread.run_sync(lambda: self._document(caller, args))

    def _document(self, caller: Principal, args: GetDocumentArgs) -> dict[str, Any]:
        # One answer for "missing" and "not yours": a caller must not learn that a document exists.
        missing = NotFound(f"no document {args.doc_id!r} in knowledge base {args.kb!r}")
        row = self._c.registry.document(args.kb, args.doc_id)
        if row is None or row.status != "ready" or not caller.access.can_read(row.acl_groups):
            raise missing
        version = args.version or row.current_version
        stored = next((v for v in self._c.registry.versions(args.kb, args.doc_id) if v.version == version), None)
        if (
            stored is None
            or stored.status not in ("ready", "replaced")
            or not caller.access.can_read(stored.acl_groups)
        ):
            raise missing
        if version == row.current_version and any(
            (h.doc_id, h.version) == (args.doc_id, version) for h in self._c.registry.hidden_versions(args.kb)
        ):
            raise missing
        chunks = [c for c in self._c.store.document_chunks(args.kb, args.doc_id) if c.version == version]
        # Every chunk must be readable too: the store is what retrieval trusts, and a version whose groups
        # were narrowed must not be read through chunks that still carry the old ones.
        if not chunks or not all(caller.access.can_read(c.acl_groups) for c in chunks):
            raise missing
        first = chunks[0]
        return {
            "kb": args.kb, "doc_id": args.doc_id, "version": version, "title": first.title or row.title,
            "file": first.source, "pages": max((c.page or 0 for c in chunks), default=0) or None,
            "text": join_chunks(chunks),
        }  # fmt: skip

    # resources -------------------------------------------------------------------------------------
    def resources(self, caller: Principal) -> list[types.Resource]:
        listing = types.Resource(
            uri=KB_LIST_URI, name="knowledge-bases", mime_type="application/json",
            description="The knowledge bases this key may use, with what each holds: pick one as `kb`.",
        )  # fmt: skip
        return [listing] + [_kb_resource(kb) for kb in self.knowledge_bases(caller)]

    def read(self, caller: Principal, uri: str) -> str:
        kbs = {kb.name: kb for kb in self.knowledge_bases(caller)}
        if uri == KB_LIST_URI:
            return json.dumps(
                [{"name": kb.name, "description": kb.description, "uri": f"{KB_URI_PREFIX}{kb.name}"}
                 for kb in kbs.values()],
                ensure_ascii=False,
            )  # fmt: skip
        name = uri.removeprefix(KB_URI_PREFIX) if uri.startswith(KB_URI_PREFIX) else None
        if name is None or name not in kbs:
            # The same answer for a knowledge base that does not exist and one the key may not use.
            raise MCPError(types.INVALID_PARAMS, f"no resource {uri!r}")
        kb = kbs[name]
        readable = [
            row for row in self._c.registry.documents(kb.name)
            if row.status == "ready" and caller.access.can_read(row.acl_groups)
        ]  # fmt: skip
        return json.dumps(
            {"name": kb.name, "description": kb.description, "documents": len(readable)}, ensure_ascii=False
        )


_ARGS: dict[str, type[BaseModel]] = {
    "search": SearchArgs, "ask": AskArgs, "list_documents": ListDocumentsArgs, "get_document": GetDocumentArgs,
}  # fmt: skip


def _hit(rank: int, hit: ScoredChunk) -> dict[str, Any]:
    chunk = hit.chunk
    return {
        "rank": rank, "title": chunk.title, "page": chunk.page, "section": chunk.section, "snippet": chunk.text,
        "doc_id": chunk.doc_id, "chunk_id": chunk.chunk_id, "score": hit.score, "score_kind": hit.score_kind,
    }  # fmt: skip


def _document_entry(row: DocumentRow) -> dict[str, Any]:
    return {
        "doc_id": row.doc_id, "title": row.title, "version": row.current_version, "tags": list(row.tags),
        # The file name only: where the file sat on the server is no business of the caller.
        "file": PurePath(row.source).name if row.source else "", "updated_at": row.updated_at.isoformat(),
    }  # fmt: skip


def _kb_resource(kb: KnowledgeBase) -> types.Resource:
    return types.Resource(
        uri=f"{KB_URI_PREFIX}{kb.name}", name=kb.name, mime_type="application/json",
        description=kb.description or f"knowledge base {kb.name}",
    )  # fmt: skip


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _validation_message(exc: ValidationError) -> str:
    return "invalid arguments: " + "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def join_chunks(chunks: Sequence[Chunk]) -> str:
    """A document's text from its chunks in reading order, each overlap with the chunk before kept once."""
    text = ""
    for chunk in sorted(chunks, key=lambda c: c.ordinal):
        piece = chunk.text
        if not text:
            text = piece
            continue
        overlap = _overlap(text, piece)
        text += piece[overlap:] if overlap else "\n\n" + piece
    return text


def _overlap(before: str, after: str, window: int = 8000, anchor: int = 24) -> int:
    """The length of the longest end of `before` that `after` starts with (at least `anchor` characters,
    so that a short coincidence is not taken for the splitter's overlap)."""
    if len(after) < anchor:
        return 0
    start = max(0, len(before) - window)
    head = after[:anchor]
    i = before.find(head, start)
    while i != -1:
        if after.startswith(before[i:]):
            return len(before) - i
        i = before.find(head, i + 1)
    return 0


# -- the server ---------------------------------------------------------------------------------------

INSTRUCTIONS = (
    "kb answers from company documents with citations. Read kb://knowledge-bases to see which knowledge "
    "bases you may use and what each holds; `search` for passages, `ask` for a cited answer, "
    "`list_documents` and `get_document` to read whole documents. You only ever see documents your key "
    "may read."
)

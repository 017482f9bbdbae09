"""The web app's HTTP client for the kb API: every call carries the signed-in user's own key.

Async throughout, so that a Gradio handler waiting on the API (a streamed answer, an upload) never blocks
the event loop that serves the other sessions. The sessions share one connection pool per event loop:
building an httpx client loads the CA bundle (tens of milliseconds of CPU on the loop), which twenty
sessions asking at once would pay twenty times. The transport is a seam for unit tests
(httpx.MockTransport).
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import aconnect_sse


class ApiError(Exception):
    """The API refused or failed a call: its status, error code and message (the API's one error shape)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Unreachable(ApiError):
    """No answer from the API at all (refused connection, timeout)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


@dataclass(frozen=True)
class KnowledgeBase:
    name: str
    description: str


@dataclass(frozen=True)
class Me:
    """What `GET /me` says about the key: who it is and what it may do."""

    name: str
    role: str
    groups: tuple[str, ...]
    permissions: frozenset[str]
    knowledge_bases: tuple[KnowledgeBase, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, body: dict[str, Any]) -> Me:
        return cls(
            name=str(body["name"]), role=str(body["role"]), groups=tuple(body.get("groups", [])),
            permissions=frozenset(body.get("permissions", [])),
            knowledge_bases=tuple(
                KnowledgeBase(str(kb["name"]), str(kb.get("description", ""))) for kb in body.get("knowledge_bases", [])
            ),
        )  # fmt: skip

    @property
    def can_ask(self) -> bool:
        return "ask" in self.permissions

    @property
    def can_write_documents(self) -> bool:
        return "write_documents" in self.permissions

    @property
    def can_manage_keys(self) -> bool:
        return "manage_keys" in self.permissions

    @property
    def can_read_audit(self) -> bool:
        return "read_audit" in self.permissions


def _path_part(value: str) -> str:
    # Document ids may hold "/" (a folder's files keep their relative paths): encoded, they stay one segment.
    return quote(value, safe="")


def _error_of(response: httpx.Response) -> ApiError:
    code, message = "http_error", response.reason_phrase or f"HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    return ApiError(response.status_code, code, message)


class Pool:
    """One httpx client per event loop (a client is bound to the loop it first ran on), shared by the
    sessions; it carries no key, each request brings its own."""

    def __init__(self, *, max_connections: int = 200) -> None:
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(limits=self._limits, timeout=None)
            self._clients[loop] = client
        return client


_SHARED = Pool()


class KbClient:
    def __init__(
        self, api_url: str, key: str, *, timeout_s: float = 180.0, transport: httpx.AsyncBaseTransport | None = None,
        pool: Pool | None = None,
    ) -> None:  # fmt: skip
        self._base = api_url.rstrip("/")
        self._key = key
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)
        self._transport = transport
        self._pool = pool or _SHARED

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._transport is not None:
            async with httpx.AsyncClient(transport=self._transport) as own:
                yield own
        else:
            yield self._pool.client()

    def _url(self, path: str) -> str:
        return self._base + path

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self._client() as client:
                response = await client.request(
                    method, self._url(path), headers=self._headers(), timeout=self._timeout, **kwargs
                )
        except httpx.HTTPError as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from exc
        if response.status_code >= 400:
            raise _error_of(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- who am I ---------------------------------------------------------------------------------
    async def me(self) -> Me:
        return Me.of(await self._call("GET", "/me"))

    # -- answers ----------------------------------------------------------------------------------
    async def ask_stream(
        self, question: str, *, kb: str, history: Sequence[dict[str, str]] = ()
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event, data) pairs of `POST /ask` with "stream": true: token…, citations, done (or error)."""
        payload = {"question": question, "kb": kb, "history": list(history), "stream": True}
        try:
            async with (
                self._client() as client,
                aconnect_sse(
                    client, "POST", self._url("/ask"), json=payload, headers=self._headers(), timeout=self._timeout
                ) as source,
            ):
                if source.response.status_code >= 400:
                    await source.response.aread()
                    raise _error_of(source.response)
                async for event in source.aiter_sse():
                    try:
                        data = json.loads(event.data) if event.data else {}
                    except ValueError:
                        data = {"text": event.data}
                    yield event.event, data if isinstance(data, dict) else {"value": data}
        except httpx.HTTPError as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from exc

    async def feedback(self, answer_id: str, rating: str, comment: str = "") -> None:
        await self._call("POST", "/feedback", json={"answer_id": answer_id, "rating": rating, "comment": comment})

    # -- documents --------------------------------------------------------------------------------
    async def documents(self, *, kb: str, q: str = "", limit: int = 20, offset: int = 0) -> dict[str, Any]:
        params: dict[str, str | int] = {"kb": kb, "limit": limit, "offset": offset}
        if q:
            params["q"] = q
        result: dict[str, Any] = await self._call("GET", "/documents", params=params)
        return result

    async def upload(
        self, paths: Sequence[Path], *, kb: str, groups: Sequence[str] = (), tags: Sequence[str] = ()
    ) -> dict[str, Any]:
        data = {"kb": kb}
        if groups:
            data["groups"] = ",".join(groups)
        if tags:
            data["tags"] = ",".join(tags)
        handles = [path.open("rb") for path in paths]
        try:
            files = [("files", (path.name, handle, _mime(path))) for path, handle in zip(paths, handles, strict=True)]
            result: dict[str, Any] = await self._call("POST", "/documents", data=data, files=files)
        finally:
            for handle in handles:
                handle.close()
        return result

    async def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/jobs/{_path_part(job_id)}")
        return result

    async def delete_document(self, doc_id: str, *, kb: str) -> None:
        await self._call("DELETE", f"/documents/{_path_part(doc_id)}", params={"kb": kb})

    async def replace_document(self, doc_id: str, path: Path, *, kb: str) -> dict[str, Any]:
        with path.open("rb") as handle:
            result: dict[str, Any] = await self._call(
                "PUT", f"/documents/{_path_part(doc_id)}", params={"kb": kb},
                files={"file": (path.name, handle, _mime(path))},
            )  # fmt: skip
        return result

    async def update_document(
        self, doc_id: str, *, kb: str, groups: Sequence[str], tags: Sequence[str]
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "PATCH", f"/documents/{_path_part(doc_id)}", params={"kb": kb},
            json={"groups": list(groups), "tags": list(tags)},
        )  # fmt: skip
        return result

    async def versions(self, doc_id: str, *, kb: str) -> list[dict[str, Any]]:
        body = await self._call("GET", f"/documents/{_path_part(doc_id)}/versions", params={"kb": kb})
        return list(body.get("items", [])) if isinstance(body, dict) else []

    async def restore(self, doc_id: str, version: int, *, kb: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", f"/documents/{_path_part(doc_id)}/versions/{int(version)}/restore", params={"kb": kb}
        )
        return result

    @asynccontextmanager
    async def download(self, doc_id: str, *, kb: str) -> AsyncIterator[httpx.Response]:
        """The original file as a streamed response (status checked); the caller reads it inside the block."""
        try:
            async with (
                self._client() as client,
                client.stream(
                    "GET",
                    self._url(f"/documents/{_path_part(doc_id)}/file"),
                    params={"kb": kb},
                    headers=self._headers(),
                    timeout=self._timeout,
                ) as response,
            ):
                if response.status_code >= 400:
                    await response.aread()
                    raise _error_of(response)
                yield response
        except httpx.HTTPError as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from exc

    # -- administration ---------------------------------------------------------------------------
    async def create_key(
        self, *, name: str, role: str, groups: Sequence[str], kbs: Sequence[str], expires: str = "",
        allow_ips: Sequence[str] = (),
    ) -> dict[str, Any]:  # fmt: skip
        payload: dict[str, Any] = {"name": name, "role": role, "groups": list(groups), "kbs": list(kbs)}
        if expires:
            payload["expires"] = expires
        if allow_ips:
            payload["allow_ips"] = list(allow_ips)
        result: dict[str, Any] = await self._call("POST", "/admin/keys", json=payload)
        return result

    async def keys(self, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        params = {"include_revoked": "true"} if include_revoked else {}
        return list(await self._call("GET", "/admin/keys", params=params))

    async def revoke_key(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"/admin/keys/{_path_part(name)}/revoke")
        return result

    async def audit(self, **filters: str | int) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v not in ("", None)}
        params.setdefault("order", "desc")
        result: dict[str, Any] = await self._call("GET", "/admin/audit", params=params)
        return result


def _mime(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"

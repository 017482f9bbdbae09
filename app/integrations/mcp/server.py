"""kb as an MCP server (official `mcp` SDK): tools to search, ask, list and read documents, and the
knowledge bases as resources, for agents and editors.

Two transports, one server definition: streamable HTTP mounted on the API at /mcp (the API's
AuthMiddleware has already verified the key and left the principal on the request), and stdio for a
local client (`kb mcp --stdio`, the key given once at start). Every call asks `principal_of(ctx)` who
is calling and fails closed when nobody is; each tool then checks the role's permission and the key's
knowledge base exactly as the HTTP routes do, and reads with the key's access. Tools and resources are
listed per caller: a key sees only what it may call and only the knowledge bases it may use, with
their descriptions, so that an agent can choose one without learning about the others.

The server is low-level on purpose (the SDK's `Server`, not `MCPServer`): `MCPServer` lists tools and
static resources without the request, so it could not tailor either to the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
from anyio import to_thread
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from app.access.keys import KeyStore
from app.access.principal import Principal
from app.answers.gate import Gate
from app.audit.trail import Actor
from app.container import Container
from app.integrations.mcp.tools import INSTRUCTIONS, KbTools, ToolCall
from app.ops.limits import AnswerSlots
from app.ops.ratelimit import RateLimiter

Context = ServerRequestContext[Any, Any]
PrincipalOf = Callable[[Context], Principal]
# The limiter, the in-flight cap and the audit identity a call goes through: the API's own over HTTP, the
# stdio process's own for `kb mcp --stdio`.
GateOf = Callable[[Context, Principal], tuple[Gate, Actor]]


def http_gate(ctx: Context, _caller: Principal) -> tuple[Gate, Actor]:
    request = ctx.request
    if not isinstance(request, Request):
        raise MCPError(types.INVALID_REQUEST, "no HTTP request behind this call")
    return Gate.of_request(request), Actor.of_request(request)


def process_gate(container: Container) -> GateOf:
    """stdio: one gate for the process (its own rate limiter, or the shared one when Redis is configured)."""
    settings = container.settings
    gate = container.gate(
        RateLimiter.from_settings(settings, container.metrics.observe_rate_limited),
        AnswerSlots(settings.limits.answers_in_flight),
    )

    def of(_ctx: Context, caller: Principal) -> tuple[Gate, Actor]:
        return gate, Actor.of_principal(caller, ip="stdio")

    return of


# -- who is calling ----------------------------------------------------------------------------------


def http_principal(ctx: Context) -> Principal:
    """The caller the API's AuthMiddleware verified for this HTTP request; refused when there is none."""
    state = getattr(ctx.request, "state", None)
    principal = getattr(state, "principal", None)
    if not isinstance(principal, Principal):
        raise MCPError(types.INVALID_REQUEST, "not authenticated: send an API key as `Authorization: Bearer KEY`")
    return principal


def key_principal(keys: KeyStore, secret: str) -> PrincipalOf:
    """stdio: one process, one client, one key. Verified again on every call, so that revoking the key or
    letting it expire stops a server that is already running."""

    def principal(_ctx: Context) -> Principal:
        found = keys.verify(secret)
        if found is None:
            raise MCPError(types.INVALID_REQUEST, "the API key is unknown, expired or revoked")
        return found

    return principal


def build_server(container: Container, principal_of: PrincipalOf, gate_of: GateOf) -> Server[Any]:
    tools = KbTools(container)

    async def list_tools(ctx: Context, _params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        caller = principal_of(ctx)
        return types.ListToolsResult(tools=await to_thread.run_sync(lambda: tools.tools(caller)))

    async def call_tool(ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        caller = principal_of(ctx)
        gate, actor = gate_of(ctx, caller)
        return await tools.call(ToolCall(caller, gate, actor), params.name, params.arguments or {})

    async def list_resources(ctx: Context, _params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        caller = principal_of(ctx)
        return types.ListResourcesResult(resources=await to_thread.run_sync(lambda: tools.resources(caller)))

    async def read_resource(ctx: Context, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        caller = principal_of(ctx)
        text = await to_thread.run_sync(lambda: tools.read(caller, params.uri))
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=params.uri, text=text, mime_type="application/json")]
        )

    return Server(
        "kb", version="0.1.0", instructions=INSTRUCTIONS, get_tool_input_schema=tools.input_schema,
        on_list_tools=list_tools, on_call_tool=call_tool, on_list_resources=list_resources,
        on_read_resource=read_resource,
    )  # fmt: skip


class HttpMcp:
    """The streamable-HTTP endpoint for the API: an ASGI app to route at /mcp, and the session manager
    whose `run()` must enclose serving (the API's lifespan enters it)."""

    def __init__(self, container: Container) -> None:
        # Stateless: each request stands alone (and is authenticated alone), so any API process behind a
        # load balancer can answer it, and no session outlives the key that opened it. No DNS-rebinding
        # check on Host/Origin: every request needs the key in a header, which a rebinding page cannot send,
        # and kb's host names are the deployment's to choose.
        self.manager = StreamableHTTPSessionManager(
            app=build_server(container, http_principal, http_gate), stateless=True, json_response=True
        )
        self.app = StreamableHTTPASGIApp(self.manager)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield


async def serve_stdio(container: Container, principal_of: PrincipalOf) -> None:
    server = build_server(container, principal_of, process_gate(container))
    async with stdio_server() as (read, write):
        # Models and connections load now, so that the first call does not wait for them; inside the stdio
        # claim, where stdout points at stderr, so that nothing a library prints can corrupt the protocol.
        await to_thread.run_sync(container.warm_up)
        await server.run(read, write, server.create_initialization_options())

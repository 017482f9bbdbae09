"""`kb mcp --stdio`: kb's MCP server for a local client (an editor, a desktop agent) over stdin/stdout.

Over the network the API itself serves MCP at /mcp; this command is for clients that launch their
servers as processes. It acts for one API key, exactly as that key would over HTTP.
"""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli._common import cli, fail, load_settings


@cli.command("mcp")
def mcp(
    stdio: Annotated[bool, typer.Option("--stdio", help="Serve MCP on stdin/stdout (the only mode here).")] = False,
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="KB_API_KEY", help="The key to act for (or env KB_API_KEY).")
    ] = "",
) -> None:
    """Serve kb's MCP tools (search, ask, list_documents, get_document) to a local client."""
    import anyio

    from app.container import Container
    from app.integrations.mcp.server import key_principal, serve_stdio

    if not stdio:
        fail("kb mcp serves stdio only (--stdio); over HTTP the API serves MCP at /mcp (`kb serve`, `kb up`)", 2)
    if not api_key:
        fail("an API key is required: --api-key KEY or the environment variable KB_API_KEY")
    container = Container(load_settings())
    principal = container.keys.verify(api_key)
    if principal is None:
        fail("the API key is unknown, expired or revoked")
    if not principal.allowed_from("127.0.0.1"):
        fail("this key may only be used from other addresses than this machine")
    anyio.run(serve_stdio, container, key_principal(container.keys, api_key))

"""kb as other systems reach it: the OpenAI-compatible API and the MCP server."""

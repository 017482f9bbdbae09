"""kb as an MCP server: tools and resources over streamable HTTP and stdio."""

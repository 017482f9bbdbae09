"""Who is calling and what they may do: API keys, roles, knowledge-base grants (docs/security.md)."""

"""Who is asking and what they may do: principals, roles, API keys, the auth middleware and the admin key routes."""

"""Answers and search: the answer service, the gate every entry point passes, sensitive terms, /ask and /search."""

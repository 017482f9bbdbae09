"""kb's neutral layer: the shared data types, the stage Protocols and small helpers.

Every package may import it; it imports no kb package (docs/architecture.md, tests/unit/test_imports.py).
"""

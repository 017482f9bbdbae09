"""`python -m app.cli`: the same as the `kb` script (used to start background workers)."""

from app.cli import main

main()

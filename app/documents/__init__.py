"""Documents and their jobs: the library (uploads, replacements, deletions), the worker, /documents and /jobs."""

"""Evaluation and benchmarks for kb: data sets, metrics, `kb eval ...` and `kb bench ...`.

This package imports the product packages and none of them imports it (tests/unit/test_imports.py).
Its commands reach the `kb` CLI as plugins (entry-point group `kb.commands`), so kb installed without
the `eval` extra still works. Keep this module empty: `kb` imports `evaluation.cli` on every start.
"""

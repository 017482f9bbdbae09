"""The package layering of docs/architecture.md, checked on every import statement (function-level too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "serving", "retrieval", "ingest", "ui", "app", "evaluation")

# What each package may import from kb. Anything not listed is forbidden, the package itself is always fine.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "serving": {"core"},
    "retrieval": {"core"},
    "ingest": {"core"},
    # The UI talks to the API over HTTP only.
    "ui": set(),
    "app": {"core", "ingest", "retrieval", "serving", "ui"},
    "evaluation": {"core", "ingest", "retrieval", "serving", "app"},
}


def kb_imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, top-level kb package) for every import in a file, including relative ones."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = path.relative_to(root).parts[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [own] if node.level else [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.append((node.lineno, top))
    return found


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for line, target in kb_imports(path, root):
                if target != package and target not in ALLOWED[package]:
                    out.append(f"{path.relative_to(root)}:{line} imports {target}")
    return out


def test_packages_import_only_downwards() -> None:
    assert violations() == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    # Guards the guard: imports that break the rule, at module or function level, must be reported.
    (tmp_path / "retrieval").mkdir()
    (tmp_path / "retrieval" / "probe.py").write_text(
        "import evaluation.metrics\n\ndef f():\n    from app.settings import Settings\n    return Settings\n",
        encoding="utf-8",
    )
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "ok.py").write_text("from . import text\nimport json\n", encoding="utf-8")
    assert violations(tmp_path) == ["retrieval/probe.py:1 imports evaluation", "retrieval/probe.py:4 imports app"]


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "evaluation"])
def test_no_product_package_imports_evaluation(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in (ROOT / package).rglob("*.py")
        for line, target in kb_imports(path)
        if target == "evaluation"
    ]
    assert offenders == []

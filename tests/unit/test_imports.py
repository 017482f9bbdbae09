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


# Inside app/: each root module or feature folder has a rank, and a service module imports only from its
# own folder or from lower ranks. HTTP edge modules (routers, FastAPI dependencies, middleware) wire
# requests to services: they may import any service and each other, but no service imports them, and
# only the CLI imports the application (main) that assembles them.
APP_RANKS: dict[str, int] = {
    "settings": 0, "errors": 0, "db": 0,
    "audit": 1,
    "access": 2,
    "ops": 3,
    "feedback": 4, "kbs": 4,
    "answers": 5, "documents": 5,
    "container": 6, "worker": 7,
    "integrations": 8,  # the OpenAI endpoint and MCP: adapters over the assembled services
    "deps": 9,
    "main": 10,
    "cli": 11,
}  # fmt: skip
EDGE_RANK = 9


def is_edge(module: str) -> bool:
    name = module.rsplit(".", 1)[-1]
    return name == "deps" or name.endswith(("router", "middleware"))


def app_unit(module: str) -> str:
    """The root module or feature folder of an app module: app.answers.gate -> answers."""
    return module.split(".")[1] if module.count(".") else "app"


def app_imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, imported module) for every import of an app module in a file under app/."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app."):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            # `from app.documents import router`: the module imported is app.documents.router.
            module = next((n for n in reversed(names) if module_path(n, root).exists()), node.module)
            found.append((node.lineno, module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("app.")]
    return found


def module_path(module: str, root: Path) -> Path:
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"


def app_violations(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / "app").rglob("*.py")):
        source = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        unit = app_unit(source)
        if source == "app":
            continue
        if unit not in APP_RANKS:
            out.append(f"{path.relative_to(root)}: app/{unit} has no rank in APP_RANKS")
            continue
        rank = EDGE_RANK if is_edge(source) and APP_RANKS[unit] < EDGE_RANK else APP_RANKS[unit]
        for line, target in app_imports(path, root):
            other = app_unit(target)
            if other not in APP_RANKS:
                continue  # reported for its own files
            target_rank = EDGE_RANK if is_edge(target) and APP_RANKS[other] < EDGE_RANK else APP_RANKS[other]
            edge_to_edge = target_rank == EDGE_RANK and rank == EDGE_RANK
            if other != unit and target_rank >= rank and not edge_to_edge:
                out.append(f"{path.relative_to(root)}:{line} ({unit}) imports {target}")
            elif other == unit and is_edge(target) and not is_edge(source):
                out.append(f"{path.relative_to(root)}:{line} ({unit}) imports the edge module {target}")
    return out


def test_app_folders_import_only_downwards() -> None:
    assert app_violations() == []


def test_the_app_checker_sees_an_upward_import(tmp_path: Path) -> None:
    for folder, text in {
        "ops": "from app.answers.gate import Gate\n",  # a lower folder reaching up
        "answers": "from app.answers import router\n",  # a service importing its own folder's router
        "kbs": "from app.container import Container\n",  # a service importing the container
        "feedback": "from app.access.principal import Principal\n",  # fine: downwards
    }.items():
        (tmp_path / "app" / folder).mkdir(parents=True)
        (tmp_path / "app" / folder / "svc.py").write_text(text, encoding="utf-8")
    for name in ("answers/gate.py", "answers/router.py", "access/principal.py", "container.py"):
        (tmp_path / "app" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "app" / name).touch()
    assert app_violations(tmp_path) == [
        "app/answers/svc.py:1 (answers) imports the edge module app.answers.router",
        "app/kbs/svc.py:1 (kbs) imports app.container",
        "app/ops/svc.py:1 (ops) imports app.answers.gate",
    ]


def test_the_app_root_holds_at_most_eight_modules() -> None:
    modules = sorted(p.name for p in (ROOT / "app").glob("*.py"))
    assert len(modules) <= 8, modules


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "evaluation"])
def test_no_product_package_imports_evaluation(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in (ROOT / package).rglob("*.py")
        for line, target in kb_imports(path)
        if target == "evaluation"
    ]
    assert offenders == []

"""Command groups reach `kb` as `kb.commands` entry points; a plugin that cannot load leaves kb working."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import EntryPoint, distributions
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from app.cli import PLUGIN_GROUP, load_plugins

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
import typer

app = typer.Typer(help="A plugin that loads.", no_args_is_help=True)


@app.command("hello")
def hello() -> None:
    typer.echo("hello from the plugin")
"""

# Imports an optional dependency that is not installed, as evaluation.cli does without the eval extra.
BROKEN = """
import kbtest_absent_dependency  # noqa: F401
import typer

app = typer.Typer()
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, EntryPoint]]:
    """The entry points of a distribution installed into tmp_path, as pip would lay it out."""
    (tmp_path / "kbtest_good.py").write_text(GOOD, encoding="utf-8")
    (tmp_path / "kbtest_broken.py").write_text(BROKEN, encoding="utf-8")
    info = tmp_path / "kbtest_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: kbtest-plugins\nVersion: 1.0\nProvides-Extra: extra-deps\n"
        "Requires-Dist: kbtest-absent-dependency>=1; extra == 'extra-deps'\n",
        encoding="utf-8",
    )
    (info / "entry_points.txt").write_text(
        f"[{PLUGIN_GROUP}]\ngood = kbtest_good:app\nbroken = kbtest_broken:app\nsearch = kbtest_good:app\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (dist,) = distributions(path=[str(tmp_path)])
    yield {ep.name: ep for ep in dist.entry_points if ep.group == PLUGIN_GROUP}
    for name in ("kbtest_good", "kbtest_broken"):
        sys.modules.pop(name, None)


def kb_like() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command()
    def search() -> None:
        typer.echo("kb's own search")

    @app.command("ask")
    def ask_command() -> None:
        typer.echo("kb's own ask")

    return app


def test_a_good_plugin_registers_its_group(plugins: dict[str, EntryPoint]) -> None:
    app = kb_like()
    assert load_plugins(app, [plugins["good"]]) == ["good"]
    result = CliRunner().invoke(app, ["good", "hello"])
    assert result.exit_code == 0 and result.stdout == "hello from the plugin\n"


def test_a_broken_plugin_leaves_kb_working_and_names_the_extra(plugins: dict[str, EntryPoint]) -> None:
    app = kb_like()
    assert load_plugins(app, [plugins["broken"], plugins["good"]]) == ["good"]
    runner = CliRunner()
    listing = runner.invoke(app, ["--help"])
    assert listing.exit_code == 0, listing.output
    assert "good" in listing.stdout and "broken" in listing.stdout and "Unavailable" in listing.stdout
    assert "'kbtest-plugins[extra-deps]'" in listing.stdout
    assert runner.invoke(app, ["search"]).stdout == "kb's own search\n"
    # Any arguments get the explanation, not a usage error or a traceback.
    used = runner.invoke(app, ["broken", "retrieval", "--dataset", "x"])
    assert used.exit_code == 1 and isinstance(used.exception, SystemExit)  # an exit, not an error
    assert used.stderr == "error: kb broken needs the extra-deps extra: pip install 'kbtest-plugins[extra-deps]'\n"


def test_a_plugin_cannot_replace_a_kb_command(plugins: dict[str, EntryPoint]) -> None:
    app = kb_like()
    assert load_plugins(app, [plugins["search"]]) == []
    assert CliRunner().invoke(app, ["search"]).stdout == "kb's own search\n"


def test_a_plugin_that_fails_for_another_reason_says_why() -> None:
    app = kb_like()
    missing = EntryPoint(name="gone", value="kbtest_no_such_module:app", group=PLUGIN_GROUP)
    assert load_plugins(app, [missing]) == []
    result = CliRunner().invoke(app, ["gone"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "kb gone could not be loaded (ModuleNotFoundError: No module named 'kbtest_no_such_module')" in result.stderr


def test_kb_declares_eval_and_bench_as_plugins_that_load() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["entry-points"]
    found = [EntryPoint(name, value, PLUGIN_GROUP) for name, value in declared[PLUGIN_GROUP].items()]
    app = kb_like()
    assert sorted(load_plugins(app, found)) == ["bench", "eval"]
    runner = CliRunner()
    for group, commands in {"eval": ("retrieval", "qa", "refusal"), "bench": ("ingest", "retrieval", "e2e")}.items():
        result = runner.invoke(app, [group, "--help"])
        assert result.exit_code == 0, result.output
        assert all(c in result.stdout for c in commands), result.stdout

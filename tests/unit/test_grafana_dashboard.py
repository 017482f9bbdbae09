"""The Grafana dashboard asks only for series that exist: kb's own (as app/ops/metrics.py exports them) and
vLLM's (as the vLLM release kb launches names them); and it shows every series kb exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from app.ops.metrics import Metrics
from ingest.registry import Registry
from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "kb.json"
# vLLM's metrics the dashboard uses, as vLLM 0.32's vllm/v1/metrics/loggers.py names them (counters are
# exposed with _total). Checked against the installed vLLM below when .venv-llm is there.
VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:time_to_first_token_seconds",
    "vllm:generation_tokens",
    "vllm:prompt_tokens",
    "vllm:kv_cache_usage_perc",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:num_preemptions",
}
# Older vLLM releases (GPU images before the rename) call the KV cache gauge this; the panel asks for both.
VLLM_LEGACY = {"vllm:gpu_cache_usage_perc"}
SUFFIXES = ("_total", "_bucket", "_sum", "_count")
METRIC = re.compile(r"\b(kb_[a-z0-9_]+|vllm:[a-z0-9_:]+)")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard()["templating"]["list"] if "definition" in v]
    return exprs


def family(sample: str) -> str:
    for suffix in SUFFIXES:
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


def kb_families(tmp_path: Path) -> set[str]:
    text = Metrics(database=Registry(f"sqlite:///{tmp_path / 'kb.db'}")).render().decode()
    # prometheus-client adds a `_created` timestamp series per counter and histogram: not kb's to chart.
    return {f.name for f in text_string_to_metric_families(text) if not f.name.endswith("_created")}


def test_kb_series_in_the_dashboard_are_the_ones_kb_exports(tmp_path: Path) -> None:
    exported = kb_families(tmp_path)
    used = {family(name) for expr in expressions() for name in METRIC.findall(expr) if name.startswith("kb_")}
    assert used, "the dashboard shows no kb series"
    assert used <= exported, f"not exported by app/ops/metrics.py: {sorted(used - exported)}"
    assert exported <= used, f"exported but on no panel: {sorted(exported - used)}"


def test_vllm_series_in_the_dashboard_are_vllms() -> None:
    used = {family(name) for expr in expressions() for name in METRIC.findall(expr) if name.startswith("vllm:")}
    assert {"vllm:num_requests_running", "vllm:time_to_first_token_seconds", "vllm:generation_tokens"} <= used
    assert used <= VLLM_METRICS | VLLM_LEGACY, sorted(used - VLLM_METRICS - VLLM_LEGACY)


def test_pinned_vllm_names_match_the_installed_vllm() -> None:
    loggers = sorted((ROOT / ".venv-llm").glob("lib/python*/site-packages/vllm/v1/metrics/loggers.py"))
    if not loggers:
        # The model server's environment is made by `make setup`; without it the pinned list stands.
        return
    defined = set(re.findall(r'"(vllm:[a-z0-9_:]+)"', loggers[0].read_text(encoding="utf-8")))
    assert defined >= VLLM_METRICS, sorted(VLLM_METRICS - defined)


def test_panels_are_well_formed() -> None:
    data = dashboard()
    assert data["uid"] == "kb-overview" and data["schemaVersion"] >= 36
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", "kb", "route"} <= variables
    cells: set[tuple[int, int]] = set()
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        for expr in (t["expr"] for t in p["targets"]):
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            # Variables the dashboard defines, or Grafana's own.
            for var in re.findall(r"\$(\w+)", expr):
                assert var in variables or var.startswith("__"), f"{p['title']}: unknown variable ${var}"

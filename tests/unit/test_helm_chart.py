"""The Helm chart (deploy/helm/kb) rendered by Helm's own engine, offline (helm-python-sdk, a dev
dependency, binds Helm's Go library; no cluster, no helm binary): the objects it makes, their probes,
security context, autoscaling metrics, and that every KB_ variable is a real setting with the value
kb expects. test_deploy_config.py also reads the chart's text without Helm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.ops.metrics import Metrics
from app.settings import Settings
from ingest.registry import Registry
from tests.conftest import ROOT
from tests.unit.test_deploy_config import setting_for

CHART = ROOT / "deploy" / "helm" / "kb"
DATABASE_URL = "postgresql+psycopg://kb:pw@postgres.db:5432/kb"
REQUIRED = {"postgresql": {"url": DATABASE_URL}}

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the dev extra) renders the chart")


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(str(CHART)).render(
        {**REQUIRED, **(values or {})}, name="kb", namespace="kb", is_install=True
    )
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def defined_metric_names(tmp_path: Path) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    text = Metrics(database=Registry(f"sqlite:///{tmp_path / 'kb.db'}")).render().decode()
    return {family.name for family in text_string_to_metric_families(text)}


def test_chart_lints_clean() -> None:
    report = helm.lint(str(CHART), REQUIRED, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_objects() -> None:
    docs = render()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ConfigMap", "kb"),
        ("Deployment", "kb-api"),
        ("Deployment", "kb-worker"),
        ("HorizontalPodAutoscaler", "kb-api"),
        ("HorizontalPodAutoscaler", "kb-worker"),
        ("PodDisruptionBudget", "kb-api"),
        ("PodDisruptionBudget", "kb-worker"),
        ("Secret", "kb"),
        ("Service", "kb-api"),
        ("ServiceAccount", "kb"),
    ]
    service = one(docs, "Service", "kb-api")
    api = one(docs, "Deployment", "kb-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_probes() -> None:
    docs = render()
    api = container(one(docs, "Deployment", "kb-api"))
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in api["ports"]
    assert api["command"] == ["kb", "serve", "--host", "0.0.0.0", "--port", "8000"]
    worker = container(one(docs, "Deployment", "kb-worker"))
    assert worker["command"] == ["kb", "worker"]
    check = worker["livenessProbe"]["exec"]["command"]
    assert check[:2] == ["python", "-c"] and "live_workers()" in check[2]
    compile(check[2], "<worker liveness>", "exec")


def test_pods_run_unprivileged() -> None:
    for deployment in (d for d in render() if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        c = container(deployment)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        # A read-only root filesystem: everything kb writes goes to the mounted volumes.
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/var/lib/kb", "/hf-cache", "/tmp"}


def test_disruption_budgets() -> None:
    docs = render()
    assert one(docs, "PodDisruptionBudget", "kb-api")["spec"]["minAvailable"] == 1
    assert one(docs, "PodDisruptionBudget", "kb-worker")["spec"]["maxUnavailable"] == 1


def test_autoscaling_on_cpu_and_kb_metrics(tmp_path: Path) -> None:
    docs = render()
    api = one(docs, "HorizontalPodAutoscaler", "kb-api")["spec"]
    worker = one(docs, "HorizontalPodAutoscaler", "kb-worker")["spec"]
    assert api["scaleTargetRef"]["name"] == "kb-api" and worker["scaleTargetRef"]["name"] == "kb-worker"
    by_type = {m["type"]: m for m in api["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert by_type["Pods"]["pods"]["metric"]["name"] == "kb_answers_in_flight"
    by_type = {m["type"]: m for m in worker["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert by_type["External"]["external"]["metric"]["name"] == "kb_ingest_queue_depth"
    # The metrics the autoscalers ask for are the ones kb exports.
    assert {"kb_answers_in_flight", "kb_ingest_queue_depth"} <= defined_metric_names(tmp_path)
    # With autoscaling, the Deployments leave the replica count to the autoscaler.
    assert "replicas" not in one(docs, "Deployment", "kb-api")["spec"]

    fixed = render({"api": {"autoscaling": {"enabled": False}}, "worker": {"autoscaling": {"queueDepthPerWorker": 0}}})
    assert one(fixed, "Deployment", "kb-api")["spec"]["replicas"] == 2
    assert [d["metadata"]["name"] for d in fixed if d["kind"] == "HorizontalPodAutoscaler"] == ["kb-worker"]
    assert [m["type"] for m in one(fixed, "HorizontalPodAutoscaler", "kb-worker")["spec"]["metrics"]] == ["Resource"]


def test_environment_is_real_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    docs = render(
        {"milvus": {"token": "root:secret"}, "llm": {"apiKey": "llm-key"}, "config": {"KB_RETRIEVAL__TOP_K": 7}}
    )
    env = {**one(docs, "ConfigMap", "kb")["data"], **one(docs, "Secret", "kb")["stringData"]}
    for key in env:
        if key.startswith("KB_"):
            assert setting_for(key), f"{key} is not a kb setting"
        else:
            assert key == "HF_HOME", key
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        refs = container(deployment)["envFrom"]
        assert refs == [{"configMapRef": {"name": "kb"}}, {"secretRef": {"name": "kb"}}]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.database_url == DATABASE_URL
    assert s.milvus.uri == "http://milvus.milvus.svc.cluster.local:19530"
    assert s.milvus.token.get_secret_value() == "root:secret"
    assert s.llm_base_url == "http://vllm.llm.svc.cluster.local:8000/v1"
    assert s.llm.api_key.get_secret_value() == "llm-key"
    assert s.llm.max_model_len == 8192
    assert s.embedding.base_url == "http://tei.embeddings.svc.cluster.local/v1"
    assert s.ingest.worker_in_api is False
    assert s.ingest.engine == "procrastinate"
    assert s.api.metrics_public is False
    assert s.retrieval.top_k == 7
    assert s.home == Path("/var/lib/kb")


def test_secrets_are_required_or_come_from_an_existing_secret() -> None:
    with pytest.raises(helm.HelmError, match=r"postgresql\.url is required"):
        helm.Chart.load(str(CHART)).render({}, name="kb", namespace="kb")
    docs = render({"postgresql": {"url": ""}, "secrets": {"create": False, "existingSecret": "kb-settings"}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    api = container(one(docs, "Deployment", "kb-api"))
    assert {"secretRef": {"name": "kb-settings"}} in api["envFrom"]


def test_ingress_and_service_monitor() -> None:
    docs = render(
        {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "tls": [{"hosts": ["kb.example.com"], "secretName": "t"}],
            },
            "metrics": {"serviceMonitor": {"enabled": True}},
        }
    )
    ingress = one(docs, "Ingress", "kb")["spec"]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "kb-api", "port": {"name": "http"}}
    assert ingress["ingressClassName"] == "nginx"
    endpoint = one(docs, "ServiceMonitor", "kb-api")["spec"]["endpoints"][0]
    # /metrics needs an admin key unless made public: the monitor sends one from a Secret.
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "kb-metrics-key", "key": "key"}
    public = render({"metrics": {"public": True, "serviceMonitor": {"enabled": True}}})
    assert "authorization" not in one(public, "ServiceMonitor", "kb-api")["spec"]["endpoints"][0]
    assert one(public, "ConfigMap", "kb")["data"]["KB_API__METRICS_PUBLIC"] == "true"

"""docker-compose.yml cannot be run here (no Docker engine); check what can be checked: it parses, its
services are wired with health-gated dependencies, it holds no secret (each comes from .env through a
`${VAR:?message}` reference, so `docker compose up` refuses to start while one is unset), .env.example
lists every variable, and every KB_ variable it sets is a real setting, with the value kb expects."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from app.settings import Settings
from tests.conftest import ROOT

SERVICES = {"etcd", "minio", "milvus", "vllm", "vllm-cpu", "embed", "postgres", "redis", "kb-api", "kb-worker"}
SERVICES |= {"proxy", "prometheus", "grafana"}
# Names of variables and settings that hold secrets.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; $$ is a literal $.
REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# user:password@ in a URL, the password a reference or written out.
USERINFO = re.compile(r"://[^:/@\s]*:(?P<password>\$\{[^}]*\}|[^@/\s]+)@")
REQUIRED = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}$")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


class Unset(Exception):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation, enough to check the file: what `docker compose config` would produce."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise Unset(f"{name}: {arg}")
        if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
            return arg
        return value or ""

    return REFERENCE.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def walk_strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [item for key, value in node.items() for item in walk_strings(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [item for i, value in enumerate(node) for item in walk_strings(value, f"{path}[{i}]")]
    return [(path, str(node))] if node is not None else []


def setting_for(env_name: str) -> str | None:
    """The Settings field a KB_ variable sets (`milvus.uri`), or None when pydantic-settings would ignore it."""
    if not env_name.startswith("KB_"):
        return None
    model: type[BaseModel] = Settings
    parts = env_name.removeprefix("KB_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif i != len(parts) - 1:
            return None
    return ".".join(parts)


def filled_env() -> dict[str, str]:
    """.env.example with every empty secret given a value, as an operator would."""
    return {name: value or f"test-{name.lower()}" for name, value in env_example().items()}


def service_env(name: str, env: Mapping[str, str]) -> dict[str, str]:
    raw = services()[name].get("environment", {})
    assert isinstance(raw, dict), f"{name}: environment must be a mapping"
    return {key: interpolate(str(value), env) for key, value in raw.items()}


def test_the_whole_stack_is_there() -> None:
    assert set(services()) == SERVICES


def test_every_service_has_a_healthcheck_and_restarts() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name


def test_dependencies_wait_for_health() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition per dependency"
        for dep, spec in depends.items():
            assert dep in all_services, f"{name} depends on unknown service {dep}"
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dep}: {spec}"
            assert "healthcheck" in all_services[dep]
    for name in ("kb-api", "kb-worker"):
        assert set(all_services[name]["depends_on"]) == {"postgres", "milvus", "redis", "embed"}
    assert set(all_services["milvus"]["depends_on"]) == {"etcd", "minio"}


def test_no_secret_is_written_in_the_file() -> None:
    for path, value in walk_strings(services()):
        key = path.rsplit(".", 1)[-1]
        if SECRET_NAME.search(key):
            # A secret is one required reference, or one inside a composite value (root:${...}).
            refs = list(REFERENCE.finditer(value))
            assert refs, f"{path} = {value!r} is written in the file"
            for ref in refs:
                if SECRET_NAME.search(ref["name"]):
                    assert ref["op"] == ":?", f"{path}: {ref[0]} must fail when unset (${{VAR:?message}})"
        for url in USERINFO.finditer(value):
            assert REQUIRED.match(url["password"]), f"{path}: the password in {value!r} is not a required reference"
        for ref in REFERENCE.finditer(value):
            if SECRET_NAME.search(ref["name"]):
                assert ref["op"] == ":?", f"{path}: secret {ref['name']} has a default or may be empty"


def test_compose_refuses_to_start_while_a_secret_is_unset() -> None:
    env = filled_env()
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    interpolate(text, env)  # complete: it would start
    secrets = sorted(name for name in env if SECRET_NAME.search(name))
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MILVUS_ROOT_PASSWORD", "REDIS_PASSWORD"} <= set(secrets)
    assert {"LLM_API_KEY", "GRAFANA_ADMIN_PASSWORD"} <= set(secrets)
    for secret in secrets:
        with pytest.raises(Unset, match=secret):
            interpolate(text, {k: v for k, v in env.items() if k != secret})
        with pytest.raises(Unset, match=secret):
            interpolate(text, {**env, secret: ""})


def test_env_example_lists_every_variable_and_no_secret_value() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8").replace("$$", "")
    used = {m["name"] for m in REFERENCE.finditer(text)}
    listed = env_example()
    # COMPOSE_PROFILES is compose's own: it picks the gpu or cpu model server.
    assert used <= set(listed), f"missing from .env.example: {sorted(used - set(listed))}"
    assert set(listed) - used == {"COMPOSE_PROFILES"}
    assert listed["COMPOSE_PROFILES"] in {"gpu", "cpu"}
    for name, value in listed.items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example must not suggest a value for {name}"
    # The compose variables are not kb settings: kb reads .env too, and must not mistake them for its own.
    assert not [name for name in listed if name.startswith("KB_")]


def test_kb_environment_names_real_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = filled_env()
    for name in ("kb-api", "kb-worker", "vllm-cpu"):
        for key in service_env(name, env):
            if key.startswith("KB_"):
                # A misspelt section or field would be silently ignored by pydantic-settings.
                assert setting_for(key), f"{name}: {key} is not a kb setting"
            else:
                assert key in {"HF_HOME", "FORWARDED_ALLOW_IPS"}, f"{name}: unexpected variable {key}"
    api = service_env("kb-api", env)
    assert api == service_env("kb-worker", env)
    for key, value in api.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.milvus.uri == "http://milvus:19530"
    assert s.milvus.token.get_secret_value() == f"root:{env['MILVUS_ROOT_PASSWORD']}"
    assert s.database_url == f"postgresql+psycopg://kb:{env['POSTGRES_PASSWORD']}@postgres:5432/kb"
    assert s.redis.url.get_secret_value() == f"redis://:{env['REDIS_PASSWORD']}@redis:6379/0"
    assert s.llm_base_url == "http://llm:8000/v1"
    assert s.llm.api_key.get_secret_value() == env["LLM_API_KEY"]
    assert s.embedding.base_url == "http://embed:80/v1"
    assert s.embedding.model == s.embedding.tokenizer == env["EMBEDDING_MODEL"]
    assert s.ingest.worker_in_api is False
    assert s.ingest.engine == "procrastinate"
    assert s.api.metrics_public is True
    assert s.home == Path("/var/lib/kb")


def test_the_api_is_published_only_through_the_proxy() -> None:
    all_services = services()
    api, worker, proxy = all_services["kb-api"], all_services["kb-worker"], all_services["proxy"]
    assert "ports" not in api and "ports" not in worker
    assert int(interpolate(str(api["deploy"]["replicas"]), filled_env())) >= 2
    assert api["command"] == ["kb", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert worker["command"] == ["kb", "worker"]
    # Every published port names its host address: nothing listens on all interfaces by accident.
    for name, service in all_services.items():
        for port in service.get("ports", []):
            host = interpolate(str(port), filled_env()).split(":")[0]
            assert host == "127.0.0.1", f"{name} publishes {port} beyond this host by default"
    conf = (ROOT / "deploy" / "nginx" / "kb.conf").read_text(encoding="utf-8")
    assert "http://kb-api:8000" in conf and "proxy_buffering off" in conf
    assert re.search(r"location = /metrics \{\s*return 404;", conf)
    mounted = [v.split(":")[0] for v in proxy["volumes"]]
    assert "./deploy/nginx/kb.conf" in mounted


def test_model_servers_gpu_and_cpu() -> None:
    all_services = services()
    gpu, cpu = all_services["vllm"], all_services["vllm-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert cpu["command"] == ["kb", "serve", "llm"] and cpu["build"]["target"] == "llm-cpu"
    # Both answer as `llm`, where kb and Prometheus look for the model server.
    for service in (gpu, cpu):
        assert "llm" in service["networks"]["default"]["aliases"]
    assert service_env("vllm", filled_env())["VLLM_API_KEY"] == filled_env()["LLM_API_KEY"]


def test_monitoring_is_wired() -> None:
    all_services = services()
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["kb-api"]["dns_sd_configs"][0]["names"] == ["kb-api"]
    assert jobs["kb-api"]["dns_sd_configs"][0]["port"] == 8000
    assert jobs["vllm"]["static_configs"][0]["targets"] == ["llm:8000"]
    for service in ("prometheus", "grafana"):
        for volume in all_services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{service} mounts {source}, which is missing"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/kb.yml").read_text(encoding="utf-8"))
    dashboards_at = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{dashboards_at}:ro" in all_services["grafana"]["volumes"]
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_image_runs_as_a_user_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    assert [s.split()[2] for s in stages] == ["app", "llm-cpu"]
    for stage in stages:
        users = re.findall(r"^USER (\S+)", stage, flags=re.MULTILINE)
        assert users and users[-1] == "kb", "every stage ends as the unprivileged user"
        assert re.search(r"^HEALTHCHECK .*\n?.*CMD", stage, flags=re.MULTILINE)
    assert "useradd --system --uid 10001" in dockerfile
    assert "/healthz" in stages[0]


def test_the_image_copies_every_package_the_distribution_ships() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    assert packages and packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert not packages & set(ignored)


def test_setting_for_tells_real_settings_from_misspelt_ones() -> None:
    assert setting_for("KB_MILVUS__URI") == "milvus.uri"
    assert setting_for("KB_HOME") == "home"
    assert setting_for("KB_RATE_LIMITS__ADMIN__REQUESTS_PER_MINUTE") == "rate_limits.admin.requests_per_minute"
    assert setting_for("KB_MILVUS__URL") is None
    assert setting_for("KB_MILVUS_URI") is None
    assert setting_for("KB_HOME__X") is None
    assert setting_for("HF_HOME") is None


def chart_lines() -> Iterator[tuple[Path, str]]:
    for path in sorted((ROOT / "deploy" / "helm" / "kb").rglob("*")):
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.lstrip().startswith("#"):
                    yield path, line


def test_every_kb_variable_in_the_chart_text_is_a_setting() -> None:
    # Without rendering: every KB_ name in a template or value (comments aside: future settings such as
    # KB_STORAGE__* are documented there) is a setting kb reads.
    found = {(path.name, name) for path, line in chart_lines() for name in re.findall(r"\bKB_[A-Z0-9_]+", line)}
    assert found
    unknown = sorted((file, name) for file, name in found if not setting_for(name))
    assert not unknown, unknown

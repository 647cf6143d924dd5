"""What can be checked here without a Docker engine: the compose file, the image recipe, the
Prometheus configuration and alert rules (promtool), and that every dashboard and alert queries
only metric names the running app really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from flashsale.config import Settings
from tests.observability.scraping import promtool, scrape
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up"}
_PROMQL_WORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if match.group() not in _PROMQL_WORDS and not expr[match.end() :].lstrip().startswith("("):
            names.add(match.group())
    return names


def _dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for panel in panels for p in [panel, *_panels(panel.get("panels", []))]]


def _expressions() -> dict[str, str]:
    found = {}
    for name, dashboard in _dashboards().items():
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                found[f"{name}: {panel['title']} {target['refId']}"] = target["expr"]
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found[f"alerts.yml: {rule['alert']}"] = rule["expr"]
    return found


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{route=~"/x.*"}'
        "[$__rate_interval]))) / on (job) group_left b_total offset 5m > 1e-9 and up == bool 0"
    )

    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "up"}


async def test_dashboards_and_alerts_query_only_exported_metrics(client: httpx.AsyncClient) -> None:
    exported = (await scrape(client)).exported_names() | PROMETHEUS_OWN
    expressions = _expressions()

    unknown = {
        where: sorted(metric_names(expr) - exported)
        for where, expr in expressions.items()
        if metric_names(expr) - exported
    }
    assert unknown == {}
    used = set().union(*(metric_names(expr) for expr in expressions.values()))
    assert {
        "flashsale_http_requests_total", "flashsale_orders_created_total",
        "flashsale_orders_rejected_total", "flashsale_product_stock",
        "flashsale_settlement_jobs_waiting", "flashsale_settlement_transactions_processed_total",
        "flashsale_db_pool_connections", "process_cpu_seconds_total",
        "process_resident_memory_bytes", "python_gc_collections_total", "flashsale_database_up",
    } <= used  # fmt: skip


def test_the_three_dashboards_are_provisioned() -> None:
    dashboards = _dashboards()
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/flashsale.yml").read_text()
    )
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]

    assert {d["title"] for d in dashboards.values()} == {
        "Application Overview", "Business Metrics", "System Health",
    }  # fmt: skip
    assert len({d["uid"] for d in dashboards.values()}) == 3
    assert datasource["url"] == "http://prometheus:9090"
    for dashboard in dashboards.values():
        panels = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
        assert panels
        for panel in panels:
            assert panel["datasource"]["uid"] == datasource["uid"]
            assert panel["targets"]
    grafana = _compose()["services"]["grafana"]
    assert (
        f"./deploy/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro"
        in (grafana["volumes"])
    )


def test_promtool_accepts_the_prometheus_config_and_alert_rules(tmp_path: Path) -> None:
    # promtool checks that the scrape key's file exists: compose mounts it as a secret, so the
    # check runs on a copy that names a stand-in (and the rule file beside it).
    key_file = tmp_path / "prometheus_key"
    key_file.write_text("a-viewer-key")
    config = (DEPLOY / "prometheus.yml").read_text()
    assert "/run/secrets/prometheus_key" in config
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/run/secrets/prometheus_key", str(key_file))
    )
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    for command in (
        ["check", "config", str(tmp_path / "prometheus.yml")],  # also checks the rule files
        ["check", "rules", str(DEPLOY / "alerts.yml")],
    ):
        done = subprocess.run([promtool(), *command], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    cases = yaml.safe_load((DEPLOY / "alerts.test.yml").read_text())
    checks = [check for test in cases["tests"] for check in test["alert_rule_test"]]
    firing = {check["alertname"] for check in checks if check["exp_alerts"]}
    silent = {check["alertname"] for check in checks if not check["exp_alerts"]}

    assert cases["rule_files"] == ["alerts.yml"]
    assert firing == silent == alerts
    done = subprocess.run(
        [promtool(), "test", "rules", str(DEPLOY / "alerts.test.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose


def test_compose_runs_the_seed_environment() -> None:
    services = _compose()["services"]

    assert set(services) == {"app", "worker", "postgres", "postgres_test", "prometheus", "grafana"}
    for name in ("app", "worker"):
        service = services[name]
        environment = service["environment"]
        assert environment["SERVER_HOST"] == "0.0.0.0"
        assert (environment["DB_HOST"], environment["DB_PORT"]) == ("postgres", "5432")
        assert environment["DATABASE_URL"] == ""  # a DATABASE_URL in .env must not win
        assert "API_KEYS" in environment  # required: compose never runs the admin side open
        assert set(environment) <= {name.upper() for name in Settings.model_fields}
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["app"]["command"] == ["flashsale", "serve"]
    assert services["app"]["ports"] == ["127.0.0.1:${SERVER_PORT:-8080}:8080"]
    assert services["worker"]["command"] == ["flashsale", "worker"]
    # Prometheus scrapes the ports the containers are pinned to.
    scrape_configs = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    targets = {
        c["job_name"]: (sd["names"], sd["port"])
        for c in scrape_configs
        for sd in c.get("dns_sd_configs", [])
    }
    assert targets["flashsale-app"] == (["app"], int(services["app"]["environment"]["SERVER_PORT"]))
    assert targets["flashsale-worker"] == (
        ["worker"],
        int(services["worker"]["environment"]["METRICS_PORT"]),
    )
    # ... the app's /metrics with the viewer key compose hands Prometheus as a secret.
    app_job = next(c for c in scrape_configs if c["job_name"] == "flashsale-app")
    secret = app_job["authorization"]["credentials_file"]
    assert secret == f"/run/secrets/{services['prometheus']['secrets'][0]}"
    assert _compose()["secrets"]["prometheus_key"] == {"environment": "PROMETHEUS_KEY"}
    # Every file mounted from the repository exists.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume


def test_env_example_lists_every_setting_with_valid_values() -> None:
    path = ROOT / ".env.example"
    listed = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", path.read_text(), re.MULTILINE))

    assert {name.upper() for name in Settings.model_fields} <= listed
    assert "PROMETHEUS_MULTIPROC_DIR" in listed
    Settings(_env_file=path)


def test_dockerfile_builds_with_uv_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = dockerfile.split("AS runtime", 1)[1]
    ignored = (ROOT / ".dockerignore").read_text().splitlines()

    assert re.search(r"^FROM \S+ AS build$", dockerfile, re.MULTILINE)
    assert "uv sync --locked --no-dev" in dockerfile
    assert "COPY --from=build /app/.venv /app/.venv" in runtime
    assert "/bin/uv" not in runtime
    assert re.search(r"^USER flashsale$", runtime, re.MULTILINE)
    assert "HEALTHCHECK" in runtime
    assert "/health" in runtime
    assert re.search(r'^CMD \["flashsale", "serve"\]$', runtime, re.MULTILINE)  # exec form: PID 1
    for source in ("pyproject.toml", "uv.lock", "README.md", "src/"):
        assert f"!{source}" in ignored

"""The chart's Grafana dashboard: shipped for the sidecar when asked, every PromQL expression
valid (promtool parses each as a recording rule), and every metric it reads one the server
exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest

from chartsupport import CHART, run_helm
from dataplanesupport import dataplane_binary
from modelplane_server.metrics import Metrics

DASHBOARD = CHART / "dashboards" / "modelplane.json"
# Grafana's variables and macros, as Grafana would expand them for one query.
EXPANSIONS = {
    "$__rate_interval": "1m",
    "$namespace": "models",
    "$modeldeployment": ".*",
}


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(
            query, dict
        ):  # label_values(SELECTOR, LABEL) is Grafana's; SELECTOR is PromQL
            selector = re.fullmatch(r"label_values\((.+), *[a-z_]+\)", query["query"])
            assert selector is not None, query
            found.append(selector.group(1))
    return found


def expanded(expr: str) -> str:
    for name, value in EXPANSIONS.items():
        expr = expr.replace(name, value)
    return expr


def test_the_chart_ships_the_dashboard_for_the_sidecar_only_when_asked(helm: Path) -> None:
    default = run_helm(helm, "template", "t", str(CHART))
    assert default.returncode == 0, default.stderr
    assert "grafana_dashboard" not in default.stdout

    result = run_helm(
        helm, "template", "t", str(CHART), "--set", "grafanaDashboard.enabled=true",
        "--set", "grafanaDashboard.namespace=monitoring",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(result.stdout) if d]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    (body,) = config_map["data"].values()
    assert json.loads(body) == json.loads(DASHBOARD.read_text())


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    promtool = dataplane_binary("promtool")
    assert promtool is not None, "promtool is not built: run hack/build-tools.sh dataplane"
    found = expressions()
    assert len(found) >= 12
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr{i}", "expr": expanded(expr)}
                    for i, expr in enumerate(found)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [str(promtool), "check", "rules", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(found)} rules found" in result.stdout


def test_every_metric_it_reads_is_one_the_server_exposes() -> None:
    exposed = {
        line.split()[2]
        for line in generate_latest(Metrics().registry).decode().splitlines()
        if line.startswith("# TYPE")
    }
    names = {
        name for expr in expressions() for name in re.findall(r"\bmodelplane_[a-z0-9_]+", expr)
    }
    assert names
    for name in names:
        base = re.sub(r"_bucket$", "", name)
        assert base in exposed, f"{name}: not a metric of the server"

"""The data plane's configuration keeps the operator's promises: the local Prometheus labels
series as the operator's ServiceMonitor does, and the adapter serves what its HPA reads."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dataplane import services
from dataplanesupport import dataplane_binary
from modelplane_operator import server_contract
from modelplane_operator.render.monitoring import METRIC_RELABELINGS


def snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def test_local_prometheus_relabels_as_the_servicemonitor_promises() -> None:
    config = services.prometheus_config(Path("/k/kubeconfig"), Path("/k/rules"))
    (job,) = config["scrape_configs"]
    rules = job["relabel_configs"]
    for rule in METRIC_RELABELINGS:
        assert {snake(k): v for k, v in rule.items()} in rules, rule
    # Prometheus-Operator adds namespace and pod to every target; so does the local config.
    targets = {rule.get("target_label") for rule in rules}
    assert {"namespace", "pod", "modeldeployment", "variant"} <= targets


def test_promtool_accepts_the_local_prometheus_config(tmp_path: Path) -> None:
    """Prometheus' own checker on the generated configuration (the tier that runs it needs the
    data plane's build, as `promtool` comes from it)."""
    promtool = dataplane_binary("promtool")
    if promtool is None:
        pytest.skip("promtool is built by hack/build-tools.sh dataplane, which has not run here")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n")
    config = tmp_path / "prometheus.yml"
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "slo.yaml").write_text("groups: [{name: g, rules: [{record: r:x, expr: vector(1)}]}]")
    config.write_text(services.to_json(services.prometheus_config(kubeconfig, rules)))
    result = subprocess.run(
        [str(promtool), "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_adapter_serves_the_metric_the_operators_hpa_reads() -> None:
    names = {rule["name"]["as"] for rule in services.adapter_config()["rules"]}
    assert server_contract.QUEUE_DEPTH_METRIC in names
    assert "modelplane_batch_fill" in names

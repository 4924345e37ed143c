"""The data plane's configuration keeps the operator's promises: the local Prometheus labels
series as the operator's ServiceMonitor does, and the adapter serves what its HPA reads."""

from __future__ import annotations

import re
from pathlib import Path

from dataplane import services
from modelplane_operator import server_contract
from modelplane_operator.render import METRIC_RELABELINGS


def snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def test_local_prometheus_relabels_as_the_servicemonitor_promises() -> None:
    config = services.prometheus_config(Path("/k/kubeconfig"))
    (job,) = config["scrape_configs"]
    rules = job["relabel_configs"]
    for rule in METRIC_RELABELINGS:
        assert {snake(k): v for k, v in rule.items()} in rules, rule
    # Prometheus-Operator adds namespace and pod to every target; so does the local config.
    targets = {rule.get("target_label") for rule in rules}
    assert {"namespace", "pod", "modeldeployment", "variant"} <= targets


def test_the_adapter_serves_the_metric_the_operators_hpa_reads() -> None:
    names = {rule["name"]["as"] for rule in services.adapter_config()["rules"]}
    assert server_contract.QUEUE_DEPTH_METRIC in names
    assert "modelplane_batch_fill" in names

"""SLO alerts on the real data plane: the real Prometheus evaluates the PrometheusRule the operator
rendered, against a real server made to fail a share of requests, and pages within the windows
the spec gives; once the failures stop, the alert resolves."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest

from dataplanesupport import (
    DataPlane,
    apply,
    gateway_client,
    http_route,
    model_deployment,
    route_host,
    wait_answer,
    wait_ready,
)

from testsupport import addon_crd, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.dataplane]

PROMETHEUS_RULE_CRD = "prometheusrules.monitoring.coreos.com"
# Bounds on the load (all of it to the Gateway, inside the test's namespace).
LOAD_WORKERS = 8
LOAD_SECONDS_MAX = 120
# Short windows through the spec (burnRateAlerts), not a hack: page at twice the budget of a 90 %
# objective (20 % errors) over 1 m and 20 s, with at least 20 requests in the minute.
SLO = {
    "availability": {"objective": 90},
    "minRequests": 20,
    "alertLabels": {"team": "modelplane-tests"},
    "burnRateAlerts": [{"severity": "page", "factor": 2, "longWindow": "1m", "shortWindow": "20s"}],
}


def page(plane: DataPlane, namespace: str, state: str = "firing") -> dict[str, Any] | None:
    for alert in plane.alerts():
        labels = alert["labels"]
        if (
            labels.get("alertname") == "ModelDeploymentErrorBudgetBurn"
            and labels.get("namespace") == namespace
            and labels.get("slo") == "availability"
            and alert["state"] == state
        ):
            return alert
    return None


def test_a_real_prometheus_pages_when_a_real_server_sheds_load(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, tiny_llama_dir: Path
) -> None:
    dataplane.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", addon_crd(PROMETHEUS_RULE_CRD)
    )
    dataplane.wait_established(PROMETHEUS_RULE_CRD)
    apply(
        dataplane,
        dp_namespace,
        # One running and one waiting request at most: the rest of a burst is shed with 429s.
        model_deployment(
            "tiny",
            f"file://{tiny_llama_dir}",
            server={"maxBatchSize": 1, "maxQueue": 1},
            slo=SLO,
        ),
        http_route("tiny", "tiny", route_host(dp_namespace)),
    )
    wait_ready(dataplane, dp_namespace, "tiny")
    wait_answer(f"{dataplane.gateway}/v1/models", route_host(dp_namespace))
    rule = wait_for(
        lambda: dataplane.get("-n", dp_namespace, PROMETHEUS_RULE_CRD, "tiny"),
        timeout=60,
        what="the PrometheusRule",
    )
    dataplane.load_rules(dp_namespace, rule["spec"]["groups"])

    client = gateway_client(dataplane, route_host(dp_namespace), timeout=60)
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    unexpected: list[str] = []

    def worker() -> None:
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                client.completions.create(model="tiny", prompt="Hello", max_tokens=16)
                statuses[200] += 1
            except openai.RateLimitError:
                statuses[429] += 1
            except Exception as error:  # anything but a 429 is not what this test provokes
                unexpected.append(repr(error))

    started = time.monotonic()
    workers = [threading.Thread(target=worker) for _ in range(LOAD_WORKERS)]
    for thread in workers:
        thread.start()
    try:
        firing = wait_for(
            lambda: page(dataplane, dp_namespace),
            timeout=LOAD_SECONDS_MAX - 10,
            interval=1,
            what="the page alert firing",
        )
        fired_after = time.monotonic() - started
    finally:
        stop.set()
        for thread in workers:
            thread.join(timeout=90)
    assert not unexpected, unexpected[:3]
    shed = statuses[429] / max(sum(statuses.values()), 1)
    assert shed > 0.2, f"the server shed only {shed:.0%} of {dict(statuses)}"
    assert statuses[200] > 0
    labels = firing["labels"]
    assert labels["severity"] == "critical"
    assert labels["team"] == "modelplane-tests"
    assert (labels["long"], labels["short"]) == ("1m", "20s")
    # The short window (20 s) must see the burn, and rules run every 2 s: well inside a minute.
    assert fired_after < 60, f"fired {fired_after:.0f} s after the load began"

    # The failures stop: the short window clears and the alert resolves.
    wait_for(
        lambda: (
            page(dataplane, dp_namespace) is None
            and page(dataplane, dp_namespace, "pending") is None
        ),
        timeout=60,
        interval=1,
        what="the page alert resolving once the load stopped",
    )

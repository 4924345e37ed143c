"""Metrics and autoscaling on the real data plane: Prometheus scrapes the pods' servers with the
labels the operator promises, prometheus-adapter serves them as custom metrics, and the
kube-controller-manager's real HPA controller scales a ModelDeployment on its queue depth or its
batch fill."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dataplanesupport import (
    DataPlane,
    apply,
    describe_failure,
    events,
    gateway_client,
    http_route,
    model_deployment,
    pods,
    route_host,
    wait_answer,
    wait_ready,
)

from testsupport import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.dataplane]

# Bounds on the load this file sends (all of it to the Gateway inside the test's namespace).
LOAD_WORKERS = 8
LOAD_SECONDS_MAX = 180
TRICKLE_SECONDS_MAX = 240


def tiny(name: str, model_dir: Path, **spec: Any) -> dict[str, Any]:
    return model_deployment(name, f"file://{model_dir}", **spec)


def ready_pods(plane: DataPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in pods(plane, namespace, name)
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]


def test_prometheus_has_the_promised_labels_and_the_custom_metrics_api_serves_them(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, tiny_llama_dir: Path
) -> None:
    apply(dataplane, dp_namespace, tiny("tiny", tiny_llama_dir))
    wait_ready(dataplane, dp_namespace, "tiny")
    (pod,) = ready_pods(dataplane, dp_namespace, "tiny")
    name = pod["metadata"]["name"]

    series = wait_for(
        lambda: dataplane.prometheus_query(f'modelplane_queue_depth{{namespace="{dp_namespace}"}}'),
        timeout=60,
        interval=1,
        what="Prometheus scraping the pod's server",
    )
    (sample,) = series
    labels = sample["metric"]
    assert labels["namespace"] == dp_namespace
    assert labels["pod"] == name
    assert labels["modeldeployment"] == "tiny"
    assert labels["variant"] == "stable"
    assert sample["value"][1] == "0"
    # Every series from the pod carries them, not just the HPA's gauge.
    unlabelled = dataplane.prometheus_query(
        f'{{namespace="{dp_namespace}", job="modelplane-servers", modeldeployment=""}}'
    )
    assert unlabelled == []

    path = (
        f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{dp_namespace}/pods/*/"
        "modelplane_queue_depth"
    )

    def served() -> list[dict[str, Any]]:
        result = dataplane.kubectl("get", "--raw", path, check=False)
        return json.loads(result.stdout)["items"] if result.returncode == 0 else []

    (item,) = wait_for(served, timeout=90, interval=2, what="the custom metrics API for the pod")
    assert item["describedObject"]["name"] == name
    assert item["metricName"] == "modelplane_queue_depth"
    assert item["value"] == "0"


@pytest.mark.parametrize(
    "target",
    [
        {"targetQueueDepth": 1},
        # One sequence per step: one running request is a full batch (1000m against 500m).
        {"targetBatchFillPercent": 50},
    ],
    ids=["queue-depth", "batch-fill"],
)
def test_hpa_scales_up_under_load_and_down_without_a_failed_request(
    dataplane: DataPlane,
    dataplane_operator: object,
    dp_namespace: str,
    tiny_llama_dir: Path,
    target: dict[str, int],
) -> None:
    apply(
        dataplane,
        dp_namespace,
        # One sequence per step, so concurrent requests queue and the queue depth shows the load.
        tiny(
            "tiny",
            tiny_llama_dir,
            server={"maxBatchSize": 1},
            autoscaling={
                "minReplicas": 1,
                "maxReplicas": 3,
                "scaleDownStabilizationSeconds": 15,
                **target,
            },
        ),
        http_route("tiny", "tiny", route_host(dp_namespace)),
    )
    wait_ready(dataplane, dp_namespace, "tiny")
    wait_answer(f"{dataplane.gateway}/v1/models", route_host(dp_namespace))
    client = gateway_client(dataplane, route_host(dp_namespace), timeout=60)

    stop = threading.Event()
    failures: list[str] = []
    done = [0]
    started = time.monotonic()

    def worker() -> None:
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                client.completions.create(model="tiny", prompt="Hello", max_tokens=96)
                done[0] += 1
            except Exception as error:
                failures.append(describe_failure(error, started))

    workers = [threading.Thread(target=worker) for _ in range(LOAD_WORKERS)]
    for thread in workers:
        thread.start()
    try:
        # Under load the HPA scales up; the new pods are real processes that pass their probes.
        wait_for(
            lambda: len(ready_pods(dataplane, dp_namespace, "tiny")) >= 2,
            timeout=LOAD_SECONDS_MAX - 30,
            interval=1,
            what="the HPA scaling up to 2+ ready pods",
        )

        # ... and receive traffic through the Gateway (per-pod request counts in Prometheus).
        def pods_served() -> list[dict[str, Any]]:
            result = dataplane.prometheus_query(
                f'modelplane_requests_finished_total{{namespace="{dp_namespace}"}} > 0'
            )
            return result if len({r["metric"]["pod"] for r in result}) >= 2 else []

        wait_for(pods_served, timeout=60, interval=2, what="2+ pods serving requests")
    finally:
        stop.set()
        for thread in workers:
            thread.join(timeout=90)
    assert not failures, (
        f"{len(failures)} failed requests under load: first {failures[:3]}, last {failures[-1]}"
        f"\nevents:\n{events(dataplane, dp_namespace)}"
    )
    hpa = dataplane.get("-n", dp_namespace, "hpa", "tiny")
    assert hpa["status"]["desiredReplicas"] >= 2

    # Load gone: the HPA scales back to 1; a request every few hundred ms meanwhile must never
    # fail (terminating pods leave the EndpointSlice, preStop waits, then the server drains).
    trickle_failures: list[str] = []
    trickled = 0
    started = time.monotonic()
    deadline = time.monotonic() + TRICKLE_SECONDS_MAX
    while time.monotonic() < deadline:
        try:
            client.completions.create(model="tiny", prompt="Hi", max_tokens=4)
            trickled += 1
        except Exception as error:
            trickle_failures.append(describe_failure(error, started))
        if len(pods(dataplane, dp_namespace, "tiny")) == 1:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"did not scale down in {TRICKLE_SECONDS_MAX}s")
    assert not trickle_failures, (
        f"{len(trickle_failures)} failed during scale-down: {trickle_failures[:3]}"
        f"\nevents:\n{events(dataplane, dp_namespace)}"
    )
    assert trickled > 10

"""Canaries on the real data plane: the operator's HTTPRoute splits real requests through Traefik
by weight and header; a canary made worse for real (a server setting that sheds load with 429s)
is rolled back by the analysis against stable on the real Prometheus; a healthy one is promoted
without a failed request; reverting the spec rolls back.

Which variant served a request is read from the pods' own request counters (each server's
/metrics), not inferred from the route."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from dataplanesupport import (
    DataPlane,
    GatewayLoad,
    apply,
    canary_status,
    events,
    gateway_client,
    gateway_route,
    md_condition,
    model_deployment,
    pods,
    route_host,
    route_weights,
    served,
    start_with_route,
    wait_answer,
    wait_for_canary,
    wait_for_phase,
    wait_ready,
)

from testsupport import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.dataplane]

# Bounds on the load this file sends (all of it to the Gateway inside the test's namespace).
SPLIT_REQUESTS = 200
HEADER_REQUESTS = 30
LOAD_WORKERS = 8
HEADER = {"name": "x-canary", "value": "true"}


def test_the_gateway_splits_by_weight_and_header_and_a_revert_rolls_back(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, tiny_llama_dir: Path
) -> None:
    canary = {
        "server": {"maxWaitMs": 4},
        "replicas": 1,
        "traffic": {"weight": 20, "header": HEADER},
    }
    host = start_with_route(dataplane, dp_namespace, tiny_llama_dir, canary, replicas=2)
    wait_for_canary(dataplane, dp_namespace, weight=20)
    assert route_weights(dataplane, dp_namespace) == {"tiny-stable": 80, "tiny-canary": 20}
    split = md_condition(dataplane, dp_namespace, "TrafficSplit")
    assert (split["status"], split["reason"]) == ("True", "Gateway"), split
    client = gateway_client(dataplane, host, timeout=60)
    before = served(dataplane, dp_namespace)
    for _ in range(SPLIT_REQUESTS):
        client.completions.create(model="tiny", prompt="Hello", max_tokens=1)
    after = served(dataplane, dp_namespace)
    share = (after["canary"] - before["canary"]) / SPLIT_REQUESTS
    assert after.total() - before.total() == SPLIT_REQUESTS
    # Binomial: 4.5 standard deviations of a 20 % share of 200 requests (a weighted round robin
    # is much closer than that).
    tolerance = 4.5 * math.sqrt(0.2 * 0.8 / SPLIT_REQUESTS)
    assert abs(share - 0.2) <= tolerance, f"canary served {share:.1%} of {SPLIT_REQUESTS}"

    # Every request with the header reaches the canary, whatever the weight.
    flagged = gateway_client(dataplane, host, timeout=60).with_options(
        default_headers={"Host": host, HEADER["name"]: HEADER["value"]}
    )
    before = served(dataplane, dp_namespace)
    for _ in range(HEADER_REQUESTS):
        flagged.completions.create(model="tiny", prompt="Hello", max_tokens=1)
    after = served(dataplane, dp_namespace)
    assert after - before == Counter({"canary": HEADER_REQUESTS})

    # A revert (spec.canary removed, as `git revert` would) takes the canary out at once.
    dataplane.kubectl(
        "patch", "-n", dp_namespace, "modeldeployment", "tiny", "--type=json",
        "-p", json.dumps([{"op": "remove", "path": "/spec/canary"}]),
    )  # fmt: skip
    wait_for(
        lambda: route_weights(dataplane, dp_namespace) == {"tiny-stable": 100},
        timeout=60,
        what="the route back to stable only",
    )
    wait_for(
        lambda: not dataplane.get("-n", dp_namespace, "deployments", "-l",
                                  "modelplane.io/variant=canary")["items"],
        timeout=60,
        what="the canary Deployment deleted",
    )  # fmt: skip
    wait_for(
        lambda: (
            not canary_status(dataplane, dp_namespace)
            and "CanaryRemoved" in events(dataplane, dp_namespace)
        ),
        timeout=30,
        what="status without a canary, and the CanaryRemoved event",
    )


def test_a_canary_that_sheds_load_is_rolled_back_by_the_analysis(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, tiny_llama_dir: Path
) -> None:
    # The same model, made worse for real: one running and one waiting request at most, so a
    # share of the concurrent load gets 429s from the canary and none from stable.
    canary = {
        "server": {"maxBatchSize": 1, "maxQueue": 1},
        "replicas": 1,
        "steps": [{"weight": 50, "analysis": True}, {"weight": 80, "pause": "10m"}],
        "analysis": {
            "interval": "20s",
            "minSamples": 10,
            "inconclusiveTimeout": "5m",
            "checks": [{"name": "error-ratio", "metric": "ErrorRatio", "maxIncrease": 0.05}],
        },
    }
    host = start_with_route(dataplane, dp_namespace, tiny_llama_dir, canary, replicas=1)
    wait_for_canary(dataplane, dp_namespace, weight=50)
    with GatewayLoad(dataplane, host, LOAD_WORKERS) as load:
        wait_for_phase(dataplane, dp_namespace, "RolledBack", GatewayLoad.SECONDS_MAX - 10)
    assert not load.failures, load.failures[:3]
    assert load.statuses[429] > 0, load.statuses
    status = canary_status(dataplane, dp_namespace)
    assert status["weight"] == 0
    check = status["analysis"][0]
    assert (check["name"], check["verdict"]) == ("error-ratio", "Fail"), check
    assert check["value"] > check["baseline"] + 0.05, check
    assert min(check["canarySamples"], check["stableSamples"]) >= 10, check
    healthy = md_condition(dataplane, dp_namespace, "CanaryHealthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "RolledBack"), healthy
    assert "error-ratio" in healthy["message"]
    recorded = events(dataplane, dp_namespace)
    assert "CanaryRolledBack" in recorded
    assert "error-ratio" in recorded
    wait_for(
        lambda: route_weights(dataplane, dp_namespace) == {"tiny-stable": 100},
        timeout=30,
        what="all traffic back on stable",
    )
    # Stable alone serves the same load without a 429.
    client = gateway_client(dataplane, host, timeout=60)
    for _ in range(20):
        client.completions.create(model="tiny", prompt="Hello", max_tokens=1)


def test_a_healthy_canary_advances_and_is_promoted_without_a_failed_request(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, tiny_llama_dir: Path
) -> None:
    canary = {
        "server": {"maxWaitMs": 4},
        "replicas": 1,
        "steps": [{"weight": 30, "analysis": True}, {"weight": 60, "analysis": True}],
        "analysis": {
            "interval": "20s",
            "minSamples": 5,
            "checks": [{"name": "error-ratio", "metric": "ErrorRatio", "maxIncrease": 0.05}],
        },
    }
    host = start_with_route(dataplane, dp_namespace, tiny_llama_dir, canary, replicas=1)
    seen: list[str] = []

    def promoted() -> bool:
        summary = canary_status(dataplane, dp_namespace).get("summary", "")
        if not seen or seen[-1] != summary:
            seen.append(summary)
        return summary == "promoted"

    with GatewayLoad(dataplane, host, 2) as load:
        wait_for(
            promoted, timeout=GatewayLoad.SECONDS_MAX - 10, interval=1, what=f"promotion {seen}"
        )
    assert not load.failures, load.failures[:3]
    assert load.statuses == Counter({200: load.statuses[200]}), load.statuses
    # kubectl get md -w told the story, step by step.
    assert seen.index("30% step 1/2") < seen.index("60% step 2/2") < seen.index("promoted"), seen
    stable = dataplane.get("-n", dp_namespace, "deployment", "tiny")
    args = stable["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--max-wait-ms=4" in args
    assert route_weights(dataplane, dp_namespace) == {"tiny-stable": 100}
    assert "CanaryPromoted" in events(dataplane, dp_namespace)


def test_with_every_gpu_taken_stable_lends_and_nothing_waits_pending(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, tiny_llama_dir: Path
) -> None:
    # Two replicas of 8 GPUs take both nodes of the data plane (2 x 8 nvidia.com/gpu).
    canary = {"server": {"maxWaitMs": 4}, "replicas": 1, "traffic": {"weight": 50}}
    host = route_host(dp_namespace)
    md = model_deployment(
        "tiny",
        f"file://{tiny_llama_dir}",
        replicas=2,
        accelerator={"count": 8},
        route=gateway_route(host),
    )
    apply(dataplane, dp_namespace, md)
    wait_ready(dataplane, dp_namespace, "tiny")
    wait_answer(f"{dataplane.gateway}/v1/models", host)
    pending: list[str] = []
    reasons: set[str] = set()

    def nothing_pends_until_served() -> bool:
        reasons.add(md_condition(dataplane, dp_namespace, "GPUCapacity").get("reason", ""))
        pending.extend(
            f"{pod['metadata']['name']}: {item.get('message')}"
            for pod in pods(dataplane, dp_namespace, "tiny")
            for item in pod.get("status", {}).get("conditions", [])
            if item["type"] == "PodScheduled" and item["status"] == "False"
        )
        return canary_status(dataplane, dp_namespace).get("weight") == 50

    with GatewayLoad(dataplane, host, 2) as load:
        dataplane.kubectl(
            "patch", "-n", dp_namespace, "modeldeployment", "tiny", "--type=merge",
            "-p", json.dumps({"spec": {"canary": canary}}),
        )  # fmt: skip
        wait_for(nothing_pends_until_served, timeout=180, interval=0.5, what="the canary served")
        capacity = md_condition(dataplane, dp_namespace, "GPUCapacity")
    assert not pending, pending[:3]
    assert not load.failures, load.failures[:3]
    assert load.statuses[200] > 0
    assert capacity["status"] == "True", capacity
    assert "stable lends 1 replica(s)" in capacity["message"], capacity
    assert canary_status(dataplane, dp_namespace)["borrowed"] == 1
    stable = dataplane.get("-n", dp_namespace, "deployment", "tiny")
    assert stable["spec"]["replicas"] == 1
    # On the way, the condition said why the canary waited: stable was lending.
    assert "Borrowing" in reasons, reasons

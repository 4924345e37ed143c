"""How fast autoscaling acts on the local data plane, end to end, with the real pieces: real server
processes (the embedded SmolLM2-135M-Instruct) in pods, Prometheus scraping them, prometheus-adapter
serving `modelplane_queue_depth`, the kube-controller-manager's HPA controller (sync period 5 s)
and the operator (`modelplane-operator run`, its own process) rendering the HPA with its default,
startup-derived windows.

Measured in one run, on a data-plane cluster of its own (state under /tmp):

1. Load start (8 clients through the Gateway) to: the HPA asking for a second replica; a second
   pod Ready; that pod serving requests (its own requests_finished series in Prometheus).
2. Load stop to: the HPA asking for the minimum again; the extra pod gone. The scale-down
   stabilisation window (from `status.resolved`) is most of it, as designed.
Along the way: failed requests (must be 0), the measured startup time and the windows derived.

Run: hack/cluster.sh run .venv/bin/python bench/autoscaling.py
     (writes bench/results/autoscaling.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # bench/ is a directory of scripts, not a package

sys.path.insert(0, str(common.ROOT / "hack"))
import localcluster  # hack/ is a directory of scripts too

STATE_DIR = Path(
    os.environ.get("MODELPLANE_BENCH_DATAPLANE_DIR", "/tmp/modelplane-bench-dataplane")  # noqa: S108
)
NAMESPACE = "bench-autoscaling"
HOST = f"{NAMESPACE}.modelplane.test"
WORKERS = 8
LOAD_SECONDS_MAX = 240
SCALE_DOWN_SECONDS_MAX = 900
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(kubeconfig: Path, *what: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(common.kubectl(kubeconfig, "get", "-o", "json", *what))
    return loaded


def ready_pods(kubeconfig: Path) -> list[str]:
    listed = get(kubeconfig, "-n", NAMESPACE, "pods", "-l", "app.kubernetes.io/instance=smollm2")
    return [
        pod["metadata"]["name"]
        for pod in listed["items"]
        if not pod["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
    ]


def pod_count(kubeconfig: Path) -> int:
    listed = get(kubeconfig, "-n", NAMESPACE, "pods", "-l", "app.kubernetes.io/instance=smollm2")
    return len(listed["items"])


def prometheus(url: str, query: str) -> list[dict[str, Any]]:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with DIRECT.open(address, timeout=10) as response:
        return list(json.load(response)["data"]["result"])


def until(
    predicate: Callable[[], bool], since: float, limit_s: float, interval: float = 0.5
) -> float | None:
    """Seconds from `since` (a time.monotonic()) until `predicate()` holds; None after limit_s."""
    while time.monotonic() - since < limit_s:
        if predicate():
            return time.monotonic() - since
        time.sleep(interval)
    return None


def chat(gateway: str) -> bool:
    body = json.dumps(
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Write a haiku about autumn."}],
            "max_tokens": 48,
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310  # the data plane's own Gateway
        f"{gateway}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "Host": HOST},
    )
    try:
        with DIRECT.open(request, timeout=120) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def model_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "smollm2", "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": "/", "servedModelName": "smollm2"},
            # One sequence per step, so concurrent requests queue and the queue depth shows load.
            "server": {"maxBatchSize": 1, "extraArgs": ["--embedding-model=none"]},
            "accelerator": {"count": 0, "cpu": "1", "memory": "2Gi"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": 1},
        },
    }


def http_route() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "smollm2", "namespace": NAMESPACE},
        "spec": {
            "parentRefs": [{"name": "modelplane", "namespace": "modelplane-gateway"}],
            "hostnames": [HOST],
            "rules": [{"backendRefs": [{"name": "smollm2", "port": 80}]}],
        },
    }


def measure(state: localcluster.ClusterState) -> dict[str, Any]:
    kubeconfig = Path(state.kubeconfig)
    gateway, prom = state.endpoints["gateway"], state.endpoints["prometheus"]
    common.install_crds(kubeconfig)
    common.kubectl(kubeconfig, "create", "namespace", NAMESPACE)
    operator = common.start_operator(kubeconfig, NAMESPACE, STATE_DIR / "operator.log")
    try:
        document = json.dumps({"kind": "List", "apiVersion": "v1",
                               "items": [model_deployment(), http_route()]})  # fmt: skip
        common.kubectl(kubeconfig, "apply", "--server-side", "-f", "-", input_text=document)
        first = until(lambda: len(ready_pods(kubeconfig)) == 1, time.monotonic(), 300)
        assert first is not None, "the first replica never became Ready"
        assert until(lambda: chat(gateway), time.monotonic(), 120, 1) is not None, "no answer"
        common.log(f"first replica Ready in {first:.0f} s; serving through the Gateway")

        stop = threading.Event()
        failed, done = [0], [0]

        def worker() -> None:
            deadline = time.monotonic() + LOAD_SECONDS_MAX
            while not stop.is_set() and time.monotonic() < deadline:
                if chat(gateway):
                    done[0] += 1
                else:
                    failed[0] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        try:

            def hpa_wants(count: int) -> Callable[[], bool]:
                def check() -> bool:
                    hpa = get(kubeconfig, "-n", NAMESPACE, "hpa", "smollm2")
                    return int(hpa.get("status", {}).get("desiredReplicas") or 0) == count

                return check

            decided = until(hpa_wants(2), started, LOAD_SECONDS_MAX)
            second_ready = until(
                lambda: len(ready_pods(kubeconfig)) >= 2, started, LOAD_SECONDS_MAX
            )

            def second_serves() -> bool:
                served = prometheus(
                    prom, f'modelplane_requests_finished_total{{namespace="{NAMESPACE}"}} > 0'
                )
                return len({item["metric"]["pod"] for item in served}) >= 2

            serving = until(second_serves, started, LOAD_SECONDS_MAX, interval=1)
            load_s = time.monotonic() - started
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=180)
        stopped = time.monotonic()
        common.log(f"load: {done[0]} answered, {failed[0]} failed in {load_s:.0f} s")
        scale_down_decided = until(hpa_wants(1), stopped, SCALE_DOWN_SECONDS_MAX, interval=1)
        back_to_one = until(lambda: pod_count(kubeconfig) == 1, stopped, SCALE_DOWN_SECONDS_MAX, 1)
        md = get(kubeconfig, "-n", NAMESPACE, "modeldeployment", "smollm2")
        resolved = md["status"]["resolved"]

        def since_start(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds, 1)

        return {
            "first_replica_ready_s": round(first, 1),
            "load_start_to_hpa_wants_2_s": since_start(decided),
            "load_start_to_second_pod_ready_s": since_start(second_ready),
            "load_start_to_second_pod_serving_s": since_start(serving),
            "load_stop_to_hpa_wants_1_s": since_start(scale_down_decided),
            "load_stop_to_one_pod_s": since_start(back_to_one),
            "load_seconds": round(stopped - started, 1),
            "requests_answered": done[0],
            "requests_failed": failed[0],
            "measured_startup_seconds": md["status"].get("measuredStartupSeconds"),
            "scale_up_period_seconds": resolved.get("scaleUpPeriodSeconds"),
            "scale_down_stabilization_seconds": resolved.get("scaleDownStabilizationSeconds"),
            "hpa_sync_period_s": 5,
            "scrape_interval": "2s",
        }
    finally:
        operator.terminate()
        operator.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--output", default="autoscaling")
    arguments = parser.parse_args()
    started = time.perf_counter()
    environment = common.environment()  # the load average before this run adds to it
    cluster = localcluster.LocalCluster(STATE_DIR)
    cluster.down(quiet=True)
    common.log(f"starting a data-plane cluster in {STATE_DIR}")
    state = cluster.up(nodes=2, components=localcluster.COMPONENTS)
    try:
        result = measure(state)
    finally:
        if not arguments.keep_cluster:
            cluster.down(quiet=True)
    data = {
        "benchmark": "autoscaling",
        "environment": environment,
        "command": "hack/cluster.sh run .venv/bin/python bench/autoscaling.py",
        **result,
        "duration_s": round(time.perf_counter() - started, 1),
    }
    for key, value in result.items():
        common.log(f"{key}: {value}")
    path = common.write_result(arguments.output, data)
    common.log(f"wrote {path}")
    return 0 if result["requests_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

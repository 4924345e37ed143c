"""What a ModelCache saves a new replica, on the local data plane with the real pieces: the
operator (`modelplane-operator run`, its own process), its download Job (`modelplane-server
download`) and real server pods (SmolLM2-135M-Instruct's GGUF), and a local hub (tests/hfserver.py,
huggingface_hub's API) throttled to a set bandwidth.

Measured in one run, on a data-plane cluster of its own (state under /tmp):

1. Cold: a replica whose weights are not local yet. A new ModelCache and a ModelDeployment naming
   it are created together; time until the pod is Ready = the download + the server's start,
   which is what a replica without a cache pays at every start.
2. Warm: the same ModelDeployment scaled from 1 to 2; time until the second pod is Ready, from
   the cache's claim with no download.
The ratio cold / warm is the result; the hub's access log proves the file was fetched once.

Run: hack/cluster.sh run .venv/bin/python bench/model_cache.py [--hub-mbps 20]
     (writes bench/results/model_cache.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import common  # bench/ is a directory of scripts, not a package

sys.path.insert(0, str(common.ROOT / "hack"))
sys.path.insert(0, str(common.ROOT / "tests"))
from hfserver import embedded_repo, serving  # the local hub of the tests

import localcluster  # hack/ is a directory of scripts too

STATE_DIR = Path(
    os.environ.get("MODELPLANE_BENCH_DATAPLANE_DIR", "/tmp/modelplane-bench-model-cache")  # noqa: S108
)
NAMESPACE = "bench-model-cache"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
READY_LIMIT_S = 600


def get(kubeconfig: Path, *what: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(common.kubectl(kubeconfig, "get", "-o", "json", *what))
    return loaded


def ready_pods(kubeconfig: Path, name: str) -> int:
    listed = get(kubeconfig, "-n", NAMESPACE, "pods", "-l", f"app.kubernetes.io/instance={name}")
    return sum(
        1
        for pod in listed["items"]
        if pod["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "modelplane-server"
        and not pod["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
    )


def until_ready(kubeconfig: Path, name: str, count: int, since: float) -> float:
    while time.monotonic() - since < READY_LIMIT_S:
        if ready_pods(kubeconfig, name) >= count:
            return round(time.monotonic() - since, 1)
        time.sleep(0.5)
    raise TimeoutError(f"{name} never had {count} Ready pods")


def objects(endpoint: str) -> list[dict[str, Any]]:
    cache = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelCache",
        "metadata": {"name": "smollm2", "namespace": NAMESPACE},
        "spec": {
            "source": {"uri": f"hf://{SMOLLM2}", "ggufFile": GGUF, "endpoint": endpoint},
            "storage": {"size": "1Gi"},
        },
    }
    md = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": f"hf://{SMOLLM2}", "ggufFile": GGUF, "cacheRef": "smollm2"},
            "replicas": 1,
            "server": {"extraArgs": ["--embedding-model=none"]},
            "accelerator": {"count": 0, "cpu": "1", "memory": "2Gi"},
        },
    }
    return [cache, md]


def measure(state: localcluster.ClusterState, hub_mbps: float) -> dict[str, Any]:
    kubeconfig = Path(state.kubeconfig)
    common.install_crds(kubeconfig)
    common.kubectl(kubeconfig, "create", "namespace", NAMESPACE)
    operator = common.start_operator(kubeconfig, NAMESPACE, STATE_DIR / "operator.log")
    try:
        # 127.0.0.1 of the cluster's own network namespace, where the local kubelet's pods run.
        with serving([embedded_repo(SMOLLM2)]) as hub:
            size = hub.repos[SMOLLM2].file(GGUF)
            assert size is not None
            hub.behaviour.bytes_per_second = int(hub_mbps * 1_000_000)
            document = json.dumps(
                {"kind": "List", "apiVersion": "v1", "items": objects(hub.endpoint)}
            )
            started = time.monotonic()
            common.kubectl(kubeconfig, "apply", "--server-side", "-f", "-", input_text=document)
            cold = until_ready(kubeconfig, "chat", 1, started)
            common.log(f"cold replica (download + start) Ready in {cold} s")
            common.kubectl(
                kubeconfig, "scale", "-n", NAMESPACE, "modeldeployment", "chat", "--replicas=2"
            )
            started = time.monotonic()
            warm = until_ready(kubeconfig, "chat", 2, started)
            common.log(f"warm replica (from the cache) Ready in {warm} s")
            fetches = len(hub.fetches(SMOLLM2, GGUF))
            cache = get(kubeconfig, "-n", NAMESPACE, "modelcache", "smollm2")["status"]
        return {
            "model": f"{SMOLLM2}/{GGUF}",
            "model_bytes": size.size,
            "hub_megabytes_per_second": hub_mbps,
            "cold_replica_ready_s": cold,
            "warm_replica_ready_s": warm,
            "cold_over_warm": round(cold / warm, 2),
            "file_fetches": fetches,
            "cache_size_bytes": cache.get("sizeBytes"),
        }
    finally:
        operator.terminate()
        operator.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub-mbps", type=float, default=20.0, help="the hub's MB/s (20)")
    parser.add_argument("--keep-cluster", action="store_true")
    arguments = parser.parse_args()
    started = time.perf_counter()
    environment = common.environment()
    cluster = localcluster.LocalCluster(STATE_DIR)
    cluster.down(quiet=True)
    common.log(f"starting a data-plane cluster in {STATE_DIR}")
    state = cluster.up(nodes=2, components=localcluster.COMPONENTS)
    try:
        result = measure(state, arguments.hub_mbps)
    finally:
        if not arguments.keep_cluster:
            cluster.down(quiet=True)
    data = {
        "benchmark": "model_cache",
        "environment": environment,
        "command": "hack/cluster.sh run .venv/bin/python bench/model_cache.py",
        **result,
        "duration_s": round(time.perf_counter() - started, 1),
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    print(f"wrote {common.write_result('model_cache', data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

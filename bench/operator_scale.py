"""The operator at scale on the local control plane: 1000 simulated (kwok) GPU nodes, 500
ModelDeployments applied at once.

Measured in one run, on a cluster of its own (state under /tmp, not the dev cluster at .cluster):

1. The floor: the same children, rendered offline by `render()`, server-side applied directly
   with the operator's own `Kube.apply` (one task per ModelDeployment applying its children in
   order, 16 tasks in flight) into a namespace of their own; time until every child exists.
2. The operator (`modelplane-operator run`, a separate process, watching one namespace): 500 CRs
   created at once; time until every child exists, and until every CR reports Ready=True.
3. Steady state: API writes over several resync periods with nothing changing (target 0).
4. Operator RSS (peak and at steady state) and CPU seconds, from /proc.

API writes come from the API server's own `apiserver_request_total` (verbs APPLY, PATCH, POST, PUT,
DELETE on the kinds the operator writes; status writes by the controllers built into Kubernetes,
deployments/status and horizontalpodautoscalers/status, are left out).

Run: .venv/bin/python bench/operator_scale.py   (writes bench/results/operator_scale.json)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # bench/ is a directory of scripts, not a package

STATE_DIR = Path(
    os.environ.get("MODELPLANE_BENCH_CLUSTER_DIR", "/tmp/modelplane-bench-cluster")  # noqa: S108
)
FLOOR_NAMESPACE = "bench-floor"
OPERATOR_NAMESPACE = "bench-operator"
WRITE_VERBS = {"APPLY", "PATCH", "POST", "PUT", "DELETE"}
OUR_RESOURCES = {
    "deployments",
    "services",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
    "networkpolicies",
    "servicemonitors",
    "modeldeployments",
}
BUILT_IN_STATUS_WRITERS = {("deployments", "status"), ("horizontalpodautoscalers", "status")}
IN_FLIGHT = 16
SPEC = {"model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}}


def cluster(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MODELPLANE_CLUSTER_DIR": str(STATE_DIR)}
    return subprocess.run(
        ["hack/cluster.sh", command, *args],
        cwd=common.ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


def api_writes(kubeconfig: Path) -> Counter[str]:
    """Cumulative write requests by `resource[/subresource] VERB`, from the API server's metrics."""
    text = common.kubectl(kubeconfig, "get", "--raw", "/metrics")
    writes: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        resource, subresource, verb = (
            labels.get("resource"),
            labels.get("subresource", ""),
            labels.get("verb"),
        )
        if verb not in WRITE_VERBS or resource not in OUR_RESOURCES:
            continue
        if (resource, subresource) in BUILT_IN_STATUS_WRITERS:
            continue
        key = f"{resource}{'/' + subresource if subresource else ''} {verb}"
        writes[key] += int(float(line.rsplit(" ", 1)[1]))
    return writes


def difference(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in sorted(after) if after[key] - before[key]}


def process_usage(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return {"rss_mb": rss, "peak_rss_mb": peak, "cpu_s": cpu}


def children_of(name: str, namespace: str, uid: str | None) -> list[dict[str, Any]]:
    from modelplane_operator.models import ModelDeploymentSpec
    from modelplane_operator.render import Owner, RenderOptions, render

    spec = ModelDeploymentSpec.model_validate(SPEC)
    return list(
        render(Owner(name=name, namespace=namespace, uid=uid), spec, RenderOptions()).children
    )


async def count_children(kube: Any, namespace: str, kinds: list[Any]) -> int:
    from modelplane_operator.kube import resource_for

    total = 0
    for kind in kinds:
        async for _ in kube.client.list(resource_for(kind), namespace=namespace):
            total += 1
    return total


async def wait_until(predicate: Any, limit_s: float, interval: float = 0.5) -> float | None:
    """Seconds until `await predicate()` is true, or None after `limit_s`."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if await predicate():
            return time.perf_counter() - started
        await asyncio.sleep(interval)
    return None


async def measure(  # noqa: PLR0915  # one linear measurement
    kubeconfig: Path, count: int, resync_s: float, steady_resyncs: int
) -> dict[str, Any]:
    from lightkube import AsyncClient, KubeConfig
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Namespace

    from modelplane_operator.kinds import kind_of
    from modelplane_operator.kube import Kube, ModelDeploymentResource, with_hash

    client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)))
    kube = Kube(client)
    for namespace in (FLOOR_NAMESPACE, OPERATOR_NAMESPACE):
        await client.create(Namespace(metadata=ObjectMeta(name=namespace)))
    per_cr = children_of("md-0", FLOOR_NAMESPACE, None)
    kinds = sorted({kind_of(child) for child in per_cr}, key=lambda kind: kind.kind)
    expected = count * len(per_cr)
    common.log(f"{len(per_cr)} children per ModelDeployment ({kinds}); {expected} in all")

    # 1. The floor: direct server-side apply of the rendered children.
    rendered = [children_of(f"md-{i}", FLOOR_NAMESPACE, None) for i in range(count)]
    before = api_writes(kubeconfig)

    # At most IN_FLIGHT requests at once: lightkube's connection pool times out beyond that.
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def apply_all(children: list[dict[str, Any]]) -> None:
        async with gate:
            for child in children:
                await kube.apply(with_hash(child))

    began = time.perf_counter()
    await asyncio.gather(*(apply_all(children) for children in rendered))
    floor_s = time.perf_counter() - began
    floor_writes = difference(api_writes(kubeconfig), before)
    assert await count_children(kube, FLOOR_NAMESPACE, kinds) == expected
    common.log(f"floor: {expected} children applied directly in {floor_s:.1f} s")

    # 2. The operator, as its own process.
    environment = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "MODELPLANE_OPERATOR_RESYNC_SECONDS": str(resync_s),
        "MODELPLANE_OPERATOR_METRICS_PORT": "0",
        "MODELPLANE_OPERATOR_HEALTH_PORT": "0",
    }
    log = (STATE_DIR / "operator.log").open("w")
    operator = subprocess.Popen(  # noqa: ASYNC220  # started once, not awaited
        [
            str(common.ROOT / ".venv/bin/modelplane-operator"),
            "run",
            "--namespace",
            OPERATOR_NAMESPACE,
        ],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await asyncio.sleep(5)  # kopf starts its watches
        idle = process_usage(operator.pid)
        before = api_writes(kubeconfig)
        began = time.perf_counter()

        async def create(index: int) -> None:
            body = ModelDeploymentResource.from_dict(
                {
                    "apiVersion": "modelplane.io/v1alpha1",
                    "kind": "ModelDeployment",
                    "metadata": {"name": f"md-{index}", "namespace": OPERATOR_NAMESPACE},
                    "spec": SPEC,
                }
            )
            async with gate:
                await client.create(body)

        await asyncio.gather(*(create(i) for i in range(count)))
        created_s = time.perf_counter() - began
        common.log(f"operator: {count} ModelDeployments created in {created_s:.1f} s")

        async def all_children() -> bool:
            return await count_children(kube, OPERATOR_NAMESPACE, kinds) >= expected

        children_s = await wait_until(all_children, limit_s=600, interval=1.0)
        children_s = None if children_s is None else children_s + created_s
        common.log(f"operator: every child exists after {children_s} s")

        async def ready_count() -> int:
            ready = 0
            async for item in client.list(ModelDeploymentResource, namespace=OPERATOR_NAMESPACE):
                conditions = (item.to_dict().get("status") or {}).get("conditions") or []
                ready += any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            return ready

        async def all_ready() -> bool:
            return await ready_count() >= count

        waited = await wait_until(all_ready, limit_s=600, interval=2.0)
        ready_s = None if waited is None else time.perf_counter() - began
        ready_now = await ready_count()
        common.log(f"operator: {ready_now}/{count} Ready after {ready_s} s")
        converge_writes = difference(api_writes(kubeconfig), before)
        busy = process_usage(operator.pid)

        # 3. Steady state: nothing changes; every resync should write nothing. kopf may still be
        # working through its backlog of events when every CR is Ready, so first wait until a
        # whole resync period passes without any write (at most 5 minutes).
        quiet_since = time.perf_counter()
        settle_began = quiet_since
        last = api_writes(kubeconfig)
        while time.perf_counter() - quiet_since < resync_s + 5:
            if time.perf_counter() - settle_began > 300:
                break
            await asyncio.sleep(5)
            now = api_writes(kubeconfig)
            if now != last:
                quiet_since, last = time.perf_counter(), now
        settle_s = time.perf_counter() - settle_began
        common.log(f"writes quiet after {settle_s:.0f} s")
        before = api_writes(kubeconfig)
        usage_before = process_usage(operator.pid)
        window = resync_s * steady_resyncs
        await asyncio.sleep(window)
        steady = difference(api_writes(kubeconfig), before)
        usage_after = process_usage(operator.pid)
        common.log(f"steady state over {window:.0f} s: writes {steady}")
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        log.close()
        await client.close()
    return {
        "model_deployments": count,
        "children_per_model_deployment": len(per_cr),
        "child_kinds": [f"{a}/{k}" for a, k in kinds],
        "floor": {"seconds": floor_s, "api_writes": floor_writes},
        "operator": {
            "create_requests_s": created_s,
            "all_children_s": children_s,
            "all_ready_s": ready_s,
            "ready_at_end": ready_now,
            "api_writes_to_converge": converge_writes,
            "api_writes_to_converge_total": sum(converge_writes.values()),
            "writes_settled_after_ready_s": settle_s,
        },
        "ratio_children_to_floor": None if children_s is None else children_s / floor_s,
        "steady_state": {
            "resync_seconds": resync_s,
            "window_s": window,
            "api_writes": steady,
            "writes_per_resync": sum(steady.values()) / steady_resyncs,
            "cpu_s_per_resync": (usage_after["cpu_s"] - usage_before["cpu_s"]) / steady_resyncs,
        },
        "operator_process": {
            "idle_before_load": idle,
            "after_converging": busy,
            "at_steady_state": usage_after,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--model-deployments", type=int, default=500)
    parser.add_argument("--resync-seconds", type=float, default=20.0)
    parser.add_argument("--steady-resyncs", type=int, default=3)
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--output", default="operator_scale")
    arguments = parser.parse_args()
    started = time.perf_counter()
    common.log(f"starting a cluster with {arguments.nodes} kwok GPU nodes in {STATE_DIR}")
    cluster("down")
    up = cluster("up", "--nodes", str(arguments.nodes))
    if up.returncode != 0:
        sys.stderr.write(up.stdout + up.stderr)
        return 1
    cluster_s = time.perf_counter() - started
    kubeconfig = STATE_DIR / "kubeconfig"
    try:
        common.kubectl(
            kubeconfig, "apply", "--server-side", "--force-conflicts",
            "-f", str(common.ROOT / "crds"),
        )  # fmt: skip
        common.wait_established(kubeconfig, "modeldeployments.modelplane.io")
        result = asyncio.run(
            measure(
                kubeconfig,
                arguments.model_deployments,
                arguments.resync_seconds,
                arguments.steady_resyncs,
            )
        )
    finally:
        if not arguments.keep_cluster:
            cluster("down")
    data = {
        "benchmark": "operator_scale",
        "environment": common.environment(),
        "command": " ".join([".venv/bin/python", "bench/operator_scale.py", *sys.argv[1:]]),
        "nodes": arguments.nodes,
        "cluster_start_s": cluster_s,
        **result,
        "duration_s": time.perf_counter() - started,
    }
    path = common.write_result(arguments.output, data)
    common.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

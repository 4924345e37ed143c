"""Smoke tests: the local control plane is a real Kubernetes, and its simulated GPU nodes behave.

Each test proves one component does its job: the scheduler places GPU pods and refuses when GPUs run
out, kwok makes them Running/Ready, the controller-manager rolls out and garbage-collects, and the
apiserver validates.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import localcluster
from testsupport import Cluster, wait_for

pytestmark = pytest.mark.k8s


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def gpu_deployment(name: str, replicas: int, gpus: int, node_selector: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": node_selector,
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "containers": [
                            {
                                "name": "main",
                                "image": "registry.invalid/never-pulled:1",
                                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                            }
                        ],
                    },
                },
            },
        }
    )


def test_server_reports_the_built_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"


def test_gpu_nodes_are_ready_with_gpus_allocatable(cluster: Cluster) -> None:
    nodes = get_json(cluster, "nodes", "-l", "nvidia.com/gpu.present=true")["items"]
    assert len(nodes) >= 4
    products = {node["metadata"]["labels"]["nvidia.com/gpu.product"] for node in nodes}
    assert products == set(localcluster.GPU_PRODUCTS)
    for node in nodes:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert [c["status"] for c in ready] == ["True"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node[
            "spec"
        ]["taints"]


def test_gpu_pod_is_scheduled_on_the_requested_gpu_type_and_ready(
    cluster: Cluster, namespace: str
) -> None:
    product = "NVIDIA-A100-SXM4-80GB"
    manifest = gpu_deployment("one-gpu", 1, 1, {"nvidia.com/gpu.product": product})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

    def ready_pod() -> dict[str, Any] | None:
        for pod in get_json(cluster, "pods", "-n", namespace, "-l", "app=one-gpu")["items"]:
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True":
                return pod
        return None

    pod = wait_for(ready_pod, timeout=60, what="the GPU pod to be Running and Ready")
    node = get_json(cluster, "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == product
    assert pod["status"]["podIP"].startswith("10.244.")
    cluster.kubectl("rollout", "status", "-n", namespace, "deployment/one-gpu", "--timeout=60s")

    # What the node lifecycle controller does to a silent node's pods (an apiserver outage is
    # enough): Ready False. A kubelet writes its own view back; so does the local cluster's kwok
    # (hack/localcluster.py POD_READY_AGAIN_STAGE), or the pod would stay not Ready for good.
    name = pod["metadata"]["name"]
    cluster.kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=strategic",
        "-p", '{"status": {"conditions": [{"type": "Ready", "status": "False"}]}}',
    )  # fmt: skip

    def ready_again() -> bool:
        pod = get_json(cluster, "pod", name, "-n", namespace)
        return {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"

    wait_for(ready_again, timeout=30, what="kwok making the pod Ready again")


def test_exhausted_gpus_leave_the_next_pod_pending_with_a_reason(
    cluster: Cluster, namespace: str
) -> None:
    # A node of our own with 2 GPUs, so other tests' pods cannot change the arithmetic.
    node_name = f"gpu-exhaust-{namespace[-6:]}"
    node = localcluster.gpu_node_manifest(node_name, "NVIDIA-H100-80GB-HBM3", 2)
    node["metadata"]["labels"]["modelplane.io/test-node"] = node_name
    cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
    try:
        selector = {"modelplane.io/test-node": node_name}
        cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=gpu_deployment("fill", 3, 1, selector)
        )

        def phases() -> list[str] | None:
            pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=fill")["items"]
            found = sorted(p["status"].get("phase", "") for p in pods)
            return found if found == ["Pending", "Running", "Running"] else None

        wait_for(phases, timeout=60, what="two Running pods and one Pending")

        def unschedulable_message() -> str | None:
            for pod in get_json(cluster, "pods", "-n", namespace, "-l", "app=fill")["items"]:
                for condition in pod["status"].get("conditions", []):
                    if (
                        condition["type"] == "PodScheduled"
                        and condition.get("reason") == "Unschedulable"
                    ):
                        return str(condition["message"])
            return None

        message = wait_for(unschedulable_message, timeout=30, what="an Unschedulable condition")
        assert "Insufficient nvidia.com/gpu" in message
    finally:
        cluster.kubectl("delete", "node", node_name, "--wait=false", check=False)


def test_deleting_a_deployment_garbage_collects_replicasets_and_pods(
    cluster: Cluster, namespace: str
) -> None:
    manifest = gpu_deployment("collected", 2, 1, {"nvidia.com/gpu.present": "true"})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    cluster.kubectl("rollout", "status", "-n", namespace, "deployment/collected", "--timeout=60s")
    assert get_json(cluster, "replicasets", "-n", namespace, "-l", "app=collected")["items"]

    cluster.kubectl("delete", "-n", namespace, "deployment/collected", "--wait=false")

    def all_gone() -> bool:
        replicasets = get_json(cluster, "replicasets", "-n", namespace, "-l", "app=collected")[
            "items"
        ]
        pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=collected")["items"]
        return not replicasets and not pods

    wait_for(all_gone, timeout=60, what="the garbage collector to remove ReplicaSets and pods")


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"spec": {"replicas": -1}}, "spec.replicas: Invalid value: -1"),
        ({"spec": {"replicaz": 1}}, 'unknown field "spec.replicaz"'),
    ],
)
def test_apiserver_rejects_invalid_objects(
    cluster: Cluster, namespace: str, patch: dict[str, Any], expected: str
) -> None:
    manifest = json.loads(gpu_deployment("invalid", 1, 1, {}))
    manifest["spec"].update(patch["spec"])
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
    )
    assert result.returncode != 0
    assert expected in result.stderr
    assert get_json(cluster, "deployments", "-n", namespace)["items"] == []

"""A model cache's groundwork on the real data plane: a claim binds to a volume the local kubelet
provisions, a download Job (the server image's `download` command, run by the local kubelet) fills
it from the local hub, a second Job finds it complete and fetches nothing, a server pod serves from
the claim mounted read-only, a Job's second pod resumes what its first lost, and a claim too small
fails its Job with the reason as the terminated message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataplanesupport import DataPlane, apply
from hfserver import HubServer, embedded_repo, serving

from testsupport import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.dataplane]

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GIB = 1 << 30


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    # 127.0.0.1 of the test's own network namespace, where the local kubelet's processes run too.
    with serving([embedded_repo(SMOLLM2)]) as server:
        yield server


def claim(name: str, size: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def download_job(
    name: str, claim_name: str, capacity_bytes: int, hub: HubServer, *extra_args: str
) -> dict[str, Any]:
    """What the operator's ModelCache will render: the server image's download command."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            # A new pod only for a network failure (exit 6): auth, not-found and out-of-space
            # (exits 3, 4, 5) cannot be fixed by trying again.
            "backoffLimit": 1,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "download",
                            "operator": "In",
                            "values": [3, 4, 5],
                        },
                    }
                ]
            },
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    # As the operator renders its pods: no API token (nor a projected volume the
                    # local kubelet cannot give).
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "download",
                            "image": "ghcr.io/modelplane/modelplane-server:0.1.0",
                            "args": [
                                "download",
                                f"hf://{SMOLLM2}",
                                "/cache",
                                f"--gguf-file={GGUF}",
                                f"--capacity-bytes={capacity_bytes}",
                                *extra_args,
                            ],
                            "env": [
                                {"name": "HF_ENDPOINT", "value": hub.endpoint},
                                {"name": "HF_HUB_OFFLINE", "value": "0"},
                                {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
                            ],
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                        }
                    ],
                    "volumes": [
                        {"name": "cache", "persistentVolumeClaim": {"claimName": claim_name}}
                    ],
                }
            },
        },
    }


def serving_pod(name: str, claim_name: str) -> dict[str, Any]:
    """A server reading the GGUF from the claim, mounted read-only, with no download of its own."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "server",
                    "image": "ghcr.io/modelplane/modelplane-server:0.1.0",
                    "args": [
                        "--model=/cache",
                        f"--gguf-file={GGUF}",
                        "--embedding-model=none",
                        "--port=8000",
                    ],
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "startupProbe": {
                        "httpGet": {"path": "/health/startup", "port": "http"},
                        "periodSeconds": 1,
                        "failureThreshold": 240,
                    },
                    "readinessProbe": {
                        "httpGet": {"path": "/health/ready", "port": "http"},
                        "periodSeconds": 1,
                    },
                    "volumeMounts": [{"name": "cache", "mountPath": "/cache", "readOnly": True}],
                }
            ],
            "volumes": [
                {
                    "name": "cache",
                    "persistentVolumeClaim": {"claimName": claim_name, "readOnly": True},
                }
            ],
        },
    }


def job_condition(plane: DataPlane, namespace: str, name: str) -> str | None:
    job = plane.get("-n", namespace, "job", name)
    for condition in job.get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return None


def job_pods(plane: DataPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    items = plane.get("-n", namespace, "pods", "-l", f"job-name={name}")["items"]
    return sorted(items, key=lambda pod: pod["metadata"]["creationTimestamp"])


def test_a_download_job_fills_a_bound_claim_once(
    dataplane: DataPlane, dp_namespace: str, hub: HubServer
) -> None:
    apply(dataplane, dp_namespace, claim("smollm2", "1Gi"))
    wait_for(
        lambda: (
            dataplane.get("-n", dp_namespace, "pvc", "smollm2")["status"].get("phase") == "Bound"
        ),
        timeout=60,
        what="the claim to bind",
    )
    bound = dataplane.get("-n", dp_namespace, "pvc", "smollm2")
    assert bound["spec"]["storageClassName"] == "modelplane-local"  # the default class
    assert bound["status"]["capacity"] == {"storage": "1Gi"}

    apply(dataplane, dp_namespace, download_job("fill", "smollm2", GIB, hub))
    done = wait_for(
        lambda: job_condition(dataplane, dp_namespace, "fill"), timeout=120, what="the Job"
    )
    assert done == "Complete", [pod["status"] for pod in job_pods(dataplane, dp_namespace, "fill")]
    claim_dir = dataplane.kubelet_dir / "claims" / dp_namespace / "smollm2"
    manifest = json.loads((claim_dir / ".modelplane" / "manifest.json").read_text())
    source = hub.repos[SMOLLM2].file(GGUF)
    assert source is not None
    assert manifest["totalBytes"] == source.size
    assert (claim_dir / GGUF).stat().st_size == source.size
    assert len(hub.fetches(SMOLLM2, GGUF)) == 1

    apply(dataplane, dp_namespace, download_job("again", "smollm2", GIB, hub))
    done = wait_for(
        lambda: job_condition(dataplane, dp_namespace, "again"), timeout=120, what="the Job"
    )
    assert done == "Complete"
    assert len(hub.fetches(SMOLLM2, GGUF)) == 1  # the second Job found it there

    apply(dataplane, dp_namespace, serving_pod("server", "smollm2"))

    def ready() -> bool:
        pod = dataplane.get("-n", dp_namespace, "pod", "server")
        conditions = pod.get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(ready, timeout=240, interval=1, what="the server serving from the claim")
    assert len(hub.fetches(SMOLLM2, GGUF)) == 1


def test_a_claim_too_small_fails_the_job_with_the_reason(
    dataplane: DataPlane, dp_namespace: str, hub: HubServer
) -> None:
    apply(dataplane, dp_namespace, claim("tiny", "1Mi"))
    apply(dataplane, dp_namespace, download_job("fill", "tiny", 1 << 20, hub))
    done = wait_for(
        lambda: job_condition(dataplane, dp_namespace, "fill"), timeout=120, what="the Job"
    )
    assert done == "Failed"
    job = dataplane.get("-n", dp_namespace, "job", "fill")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    (pod,) = job_pods(dataplane, dp_namespace, "fill")  # not retried
    status = pod["status"]
    assert status["phase"] == "Failed"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 5
    assert terminated["message"].splitlines()[-1].startswith("OutOfSpace: the model is ")
    claim_dir = Path(dataplane.kubelet_dir) / "claims" / dp_namespace / "tiny"
    assert not (claim_dir / GGUF).exists()


def test_a_new_pod_continues_the_download_its_predecessor_lost(
    dataplane: DataPlane, dp_namespace: str, hub: HubServer
) -> None:
    apply(dataplane, dp_namespace, claim("resumed", "1Gi"))
    hub.behaviour.drop_after_bytes, hub.behaviour.drops_left = 40_000_000, 1
    before = len(hub.fetches(SMOLLM2, GGUF))
    # One attempt per pod: the Job's second pod is the retry.
    apply(dataplane, dp_namespace, download_job("fill", "resumed", GIB, hub, "--attempts=1"))
    done = wait_for(
        lambda: job_condition(dataplane, dp_namespace, "fill"), timeout=180, what="the Job"
    )
    assert done == "Complete"
    first, second = job_pods(dataplane, dp_namespace, "fill")
    lost = first["status"]["containerStatuses"][0]["state"]["terminated"]
    assert lost["exitCode"] == 6
    assert lost["message"].splitlines()[-1].startswith("NetworkError: ")
    assert second["status"]["phase"] == "Succeeded"
    fetches = hub.fetches(SMOLLM2, GGUF)[before:]
    source = hub.repos[SMOLLM2].file(GGUF)
    assert source is not None
    assert [(f.range, f.body_bytes) for f in fetches] == [
        (None, 40_000_000),
        ("bytes=40000000-", source.size - 40_000_000),
    ]

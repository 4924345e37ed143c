"""ModelCache on the real data plane: a local hub serves SmolLM2's GGUF (its hub API, as
huggingface_hub calls it); a ModelCache downloads it once into a claim through the operator's Job;
two ModelDeployments (one naming it, one matching its source) and a restarted pod all serve from
it while the hub's access log shows the file fetched once. A throttled download shows its progress
in `kubectl get`, while the ModelDeployment waiting for it has no pod and says why; a wrong repo, a
missing token and a claim too small each fail with their own reason and no crash loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dataplanesupport import DIRECT, DataPlane, apply, model_deployment, pods, wait_ready
from hfserver import HubServer, embedded_repo, serving

from testsupport import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.dataplane]

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE = {"uri": f"hf://{SMOLLM2}", "ggufFile": GGUF}


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    # 127.0.0.1 of the test's own network namespace, where the local kubelet's processes run too.
    with serving([embedded_repo(SMOLLM2)]) as server:
        yield server


def model_cache(name: str, hub: HubServer, size: str = "1Gi", **source: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelCache",
        "metadata": {"name": name},
        "spec": {
            "source": {**SOURCE, "endpoint": hub.endpoint, **source},
            "storage": {"size": size},
        },
    }


def cache_status(plane: DataPlane, namespace: str, name: str) -> dict[str, Any]:
    return dict(plane.get("-n", namespace, "modelcache", name).get("status") or {})


def ready(status: dict[str, Any]) -> dict[str, Any]:
    found = [item for item in status.get("conditions") or [] if item["type"] == "Ready"]
    return dict(found[0]) if found else {}


def wait_phase(plane: DataPlane, namespace: str, name: str, phase: str) -> dict[str, Any]:
    status: dict[str, Any] = wait_for(
        lambda: (found := cache_status(plane, namespace, name)).get("phase") == phase and found,
        timeout=180,
        interval=0.5,
        what=f"ModelCache {name} {phase} ({cache_status(plane, namespace, name)})",
    )
    return status


def cached_md(name: str, **model: Any) -> dict[str, Any]:
    md = model_deployment(name, SOURCE["uri"], replicas=1)
    md["spec"]["model"] = {**SOURCE, **model}
    return md


def serves(plane: DataPlane, namespace: str, name: str) -> bool:
    """Whether the ModelDeployment's pod answers a completion (straight to its address)."""
    (pod,) = [p for p in pods(plane, namespace, name) if not p["metadata"].get("deletionTimestamp")]
    url = f"http://{pod['status']['podIP']}:8000/v1/models"
    with DIRECT.open(url, timeout=10) as response:
        return bool(response.status == 200)


def test_a_cache_downloads_once_and_every_deployment_and_restart_serves_from_it(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, hub: HubServer
) -> None:
    before = len(hub.fetches(SMOLLM2, GGUF))
    apply(dataplane, dp_namespace, model_cache("smollm2", hub))
    status = wait_phase(dataplane, dp_namespace, "smollm2", "Ready")
    source = hub.repos[SMOLLM2].file(GGUF)
    assert source is not None
    assert status["sizeBytes"] == source.size
    assert status["resolvedRevision"] == hub.repos[SMOLLM2].commit
    assert (status["claimName"], status["progress"]) == ("smollm2", "100%")
    assert ready(status)["reason"] == "Downloaded"
    table = dataplane.kubectl("get", "modelcaches", "-n", dp_namespace).stdout
    assert table.split()[:6] == ["NAME", "READY", "REASON", "PROGRESS", "SIZE", "REVISION"]

    # One names the cache, the other has the same source: both mount it, neither downloads.
    apply(dataplane, dp_namespace, cached_md("named", cacheRef="smollm2"), cached_md("matched"))
    for name in ("named", "matched"):
        wait_ready(dataplane, dp_namespace, name)
        md = dataplane.get("-n", dp_namespace, "modeldeployment", name)
        assert md["status"]["resolved"]["modelCache"] == "smollm2", md["status"]["resolved"]
        assert md["status"]["resolved"]["modelSizeSource"] == "measured"
        pod_spec = dataplane.get("-n", dp_namespace, "deployment", name)["spec"]["template"]["spec"]
        assert "initContainers" not in pod_spec
        assert pod_spec["volumes"][0]["persistentVolumeClaim"] == {
            "claimName": "smollm2", "readOnly": True
        }  # fmt: skip
        assert serves(dataplane, dp_namespace, name)

    # A restarted pod serves from the cache too.
    (old,) = pods(dataplane, dp_namespace, "named")
    dataplane.kubectl("delete", "pod", "-n", dp_namespace, old["metadata"]["name"], "--wait=false")
    wait_for(
        lambda: any(
            p["metadata"]["name"] != old["metadata"]["name"]
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
            for p in pods(dataplane, dp_namespace, "named")
        ),
        timeout=240,
        interval=1,
        what="the replacement pod Ready",
    )
    assert len(hub.fetches(SMOLLM2, GGUF)) - before == 1


def test_a_deployment_waits_without_pods_while_its_cache_downloads_with_progress(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, hub: HubServer
) -> None:
    source = hub.repos[SMOLLM2].file(GGUF)
    assert source is not None
    hub.behaviour.bytes_per_second = source.size // 15  # about 15 s
    try:
        apply(dataplane, dp_namespace, model_cache("slow", hub))
        apply(dataplane, dp_namespace, cached_md("waiting", cacheRef="slow"))

        def midway() -> bool:
            status = cache_status(dataplane, dp_namespace, "slow")
            percent = int((status.get("progress") or "0%").rstrip("%"))
            return status.get("phase") == "Downloading" and 0 < percent < 100

        wait_for(midway, timeout=120, interval=0.5, what="the download's progress in status")
        table = dataplane.kubectl("get", "modelcaches", "-n", dp_namespace, "slow").stdout
        assert "Downloading" in table
        assert "%" in table
        md = dataplane.get("-n", dp_namespace, "modeldeployment", "waiting")
        condition = ready(md["status"])
        assert (condition["status"], condition["reason"]) == ("False", "ModelDownloading")
        assert "%" in condition["message"]
        assert pods(dataplane, dp_namespace, "waiting") == []  # no pod looking for files
        md_table = dataplane.kubectl("get", "md", "-n", dp_namespace, "waiting").stdout
        assert "ModelDownloading" in md_table
    finally:
        hub.behaviour.bytes_per_second = None
    wait_phase(dataplane, dp_namespace, "slow", "Ready")
    wait_ready(dataplane, dp_namespace, "waiting")


@pytest.mark.parametrize(
    ("case", "cache", "reason", "words"),
    [
        ("wrong-repo", {"uri": "hf://nobody/nothing"}, "NotFound", "nobody/nothing"),
        ("missing-token", {}, "AuthFailed", ""),
        ("too-small", {"size": "1Mi"}, "OutOfSpace", "the model is"),
    ],
)
def test_failures_say_why_and_never_crash_loop(  # noqa: PLR0917 - fixtures and cases
    dataplane: DataPlane,
    dataplane_operator: object,
    dp_namespace: str,
    hub: HubServer,
    case: str,
    cache: dict[str, Any],
    reason: str,
    words: str,
) -> None:
    size = cache.pop("size", "1Gi")
    if case == "missing-token":
        hub.behaviour.token = "secret"
    try:
        apply(dataplane, dp_namespace, model_cache(case, hub, size=size, **cache))
        status = wait_phase(dataplane, dp_namespace, case, "Failed")
    finally:
        hub.behaviour.token = None
    condition = ready(status)
    assert (condition["status"], condition["reason"]) == ("False", reason), condition
    assert words in condition["message"]
    download_pods = dataplane.get(
        "-n", dp_namespace, "pods", "-l", "app.kubernetes.io/name=modelplane-model-cache"
    )
    assert len(download_pods["items"]) == 1  # failed once, not retried: no retry can fix it


def test_a_hub_dying_mid_download_is_resumed_not_restarted(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, hub: HubServer
) -> None:
    source = hub.repos[SMOLLM2].file(GGUF)
    assert source is not None
    cut = source.size // 2
    before = len(hub.fetches(SMOLLM2, GGUF))
    hub.behaviour.drop_after_bytes, hub.behaviour.drops_left = cut, 1
    try:
        apply(dataplane, dp_namespace, model_cache("resumed", hub))
        status = wait_phase(dataplane, dp_namespace, "resumed", "Ready")
    finally:
        hub.behaviour.drop_after_bytes, hub.behaviour.drops_left = None, 0
    assert status["sizeBytes"] == source.size
    fetched = [(f.range, f.body_bytes) for f in hub.fetches(SMOLLM2, GGUF)[before:]]
    assert fetched == [(None, cut), (f"bytes={cut}-", source.size - cut)]

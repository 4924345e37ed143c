"""The operator against the real control plane: samples become Ready, failures are named, drift
is reverted, steady state writes nothing, scale and suspend work, deletion cleans up.

kwok marks scheduled pods Running and Ready at once (no containers run), so these tests exercise
the operator, the scheduler's GPU placement and the controllers, not the inference server.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from modelplane_operator.kube import Kube
from modelplane_operator.reconcile import STATUS_FIELDS, reconcile

from testsupport import Cluster, addon_crd, argocd_health, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("running_operator")]

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "crds" / "samples"
H100 = "NVIDIA-H100-80GB-HBM3"
WRITE_METHODS = frozenset({"create", "replace", "patch", "apply", "delete", "deletecollection"})
TIMEOUT = 60


class CountingClient:
    """Wraps lightkube's AsyncClient and counts the write calls that go through it."""

    def __init__(self, inner: AsyncClient) -> None:
        self.inner = inner
        self.writes: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in WRITE_METHODS:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.writes[name] += 1
            return attribute(*args, **kwargs)

        return counted


def sample(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    return body


def apply(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def argo_cd_health(cluster: Cluster, namespace: str, name: str) -> str:
    """Argo CD's health of the ModelDeployment as the operator left it (the chart's Lua)."""
    (answer,) = argocd_health(get(cluster, namespace, "modeldeployment", name) or {})
    return answer["status"]


def get(cluster: Cluster, namespace: str, *what: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "-n", namespace, *what, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def condition(cluster: Cluster, namespace: str, name: str, kind: str) -> dict[str, Any]:
    body = get(cluster, namespace, "modeldeployment", name) or {}
    for item in (body.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return cast(dict[str, Any], item)
    return {}


def wait_condition(
    cluster: Cluster,
    namespace: str,
    name: str,
    kind: str,
    status: str,
    *,
    reason: str | None = None,
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def matches() -> dict[str, Any] | None:
        found = condition(cluster, namespace, name, kind)
        seen.clear()
        seen.update(found)
        if found.get("status") == status and (reason is None or found.get("reason") == reason):
            return found
        return None

    try:
        result: dict[str, Any] = wait_for(
            matches, timeout=TIMEOUT, what=f"{kind}={status} {reason or ''} on {name}"
        )
    except AssertionError as error:
        # wait_for's "last" is only matches()'s None: say what the condition was instead.
        raise AssertionError(f"{error}; the last {kind} condition seen: {seen or 'none'}") from None
    return result


def pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = get(cluster, namespace, "pods", "-l", f"app.kubernetes.io/instance={name}") or {}
    return cast(list[dict[str, Any]], listed.get("items", []))


def node_labels(cluster: Cluster, node: str) -> dict[str, str]:
    body = json.loads(cluster.kubectl("get", "node", node, "-o", "json").stdout)
    return cast(dict[str, str], body["metadata"]["labels"])


def test_minimal_sample_becomes_ready_with_meaningful_columns(
    cluster: Cluster, namespace: str
) -> None:
    apply(cluster, namespace, sample("minimal"))
    wait_condition(cluster, namespace, "smollm2", "Ready", "True", reason="Serving")
    assert argo_cd_health(cluster, namespace, "smollm2") == "Healthy"

    deployment = get(cluster, namespace, "deployment", "smollm2")
    service = get(cluster, namespace, "service", "smollm2")
    assert deployment is not None
    assert service is not None
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["controller"]) == ("ModelDeployment", True)
    (pod,) = pods(cluster, namespace, "smollm2")
    assert node_labels(cluster, pod["spec"]["nodeName"])["nvidia.com/gpu.present"] == "true"
    # kwok makes pods Ready at once: the measured startup is the 5 s floor, and it is recorded.
    measured = wait_for(
        lambda: ((get(cluster, namespace, "md", "smollm2") or {}).get("status") or {}).get(
            "measuredStartupSeconds"
        ),
        timeout=TIMEOUT,
        what="status.measuredStartupSeconds",
    )
    assert 5 <= measured <= 30

    table = cluster.kubectl("get", "md", "-n", namespace).stdout
    header, row = table.strip().splitlines()
    assert header.split() == [
        "NAME",
        "READY",
        "REASON",
        "REPLICAS",
        "MODEL",
        "GPU",
        "CANARY",
        "AGE",
    ]
    assert row.split()[:6] == [
        "smollm2",
        "True",
        "Serving",
        "1/1",
        "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
        "1x",
    ]
    wide = cluster.kubectl("get", "modeldeployments", "-n", namespace, "-o", "wide").stdout
    assert f"http://smollm2.{namespace}.svc/v1" in wide
    resource = get(cluster, namespace, "md", "smollm2") or {}
    # No kopf change handlers: kopf writes no bookkeeping of its own; nothing needs a finalizer.
    assert not resource["metadata"].get("finalizers")
    annotations = resource["metadata"].get("annotations", {})
    assert not [key for key in annotations if key.startswith(("kopf.", "modelplane.io/"))]
    status = resource["status"]
    # Only the fields the operator owns (kopf keeps nothing of its own in status).
    assert set(status) <= set(STATUS_FIELDS)
    assert status["resolved"]["startupProbeBudgetSeconds"] > 0
    assert status["observedGeneration"] == 1
    assert status["selector"] == (
        "app.kubernetes.io/instance=smollm2,app.kubernetes.io/name=modelplane-server"
    )


def test_full_sample_places_pods_on_the_requested_gpu(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, sample("full"))
    wait_condition(cluster, namespace, "qwen-chat", "Ready", "True")
    # The HPA, not the operator, brought the Deployment up to minReplicas.
    wait_for(lambda: len(pods(cluster, namespace, "qwen-chat")) == 2, what="two pods")
    for pod in pods(cluster, namespace, "qwen-chat"):
        labels = node_labels(cluster, pod["spec"]["nodeName"])
        assert labels["nvidia.com/gpu.product"] == H100
    for kind in ("hpa", "pdb", "networkpolicy", "service", "deployment"):
        assert get(cluster, namespace, kind, "qwen-chat") is not None, kind
    deployment = get(cluster, namespace, "deployment", "qwen-chat", "--show-managed-fields") or {}
    owners_of_replicas = [
        entry["manager"]
        for entry in deployment["metadata"]["managedFields"]
        if "f:replicas" in json.dumps(entry.get("fieldsV1", {}).get("f:spec", {}))
    ]
    assert "modelplane-operator" not in owners_of_replicas
    # We never sent replicas (the apiserver defaults 1): 2 is the HPA's doing.
    assert deployment["spec"]["replicas"] == 2
    wait_condition(
        cluster, namespace, "qwen-chat", "MonitoringReady", "False", reason="CRDNotInstalled"
    )


def test_service_monitor_once_the_prometheus_operator_crd_exists(
    cluster: Cluster, namespace: str
) -> None:
    body = sample("minimal")
    body["spec"]["monitoring"] = {"serviceMonitor": True}
    apply(cluster, namespace, body)
    wait_condition(
        cluster, namespace, "smollm2", "MonitoringReady", "False", reason="CRDNotInstalled"
    )
    crd = install_crd(cluster, "servicemonitors.monitoring.coreos.com")
    try:
        wait_condition(
            cluster, namespace, "smollm2", "MonitoringReady", "True", reason="ServiceMonitorApplied"
        )
        monitor = get(cluster, namespace, "servicemonitors.monitoring.coreos.com", "smollm2")
        assert monitor is not None
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        body["spec"]["monitoring"] = {"serviceMonitor": False}
        apply(cluster, namespace, body)
        wait_gone(
            cluster,
            namespace,
            "servicemonitors.monitoring.coreos.com",
            "smollm2",
            "ServiceMonitor deleted once monitoring is off",
        )
    finally:
        cluster.kubectl("delete", "-f", str(crd), "--wait=false", check=False)


def wait_gone(cluster: Cluster, namespace: str, resource: str, name: str, what: str) -> None:
    wait_for(lambda: get(cluster, namespace, resource, name) is None, timeout=TIMEOUT, what=what)


def install_crd(cluster: Cluster, name: str) -> Path:
    """An add-on's real CRD, applied and established; the test deletes it when done."""
    path = addon_crd(name)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    cluster.wait_established(name)
    return path


def test_keda_scales_when_its_crd_is_installed_and_never_beside_an_hpa(
    cluster: Cluster, namespace: str, running_operator: Any
) -> None:
    """actuator Auto: an HPA without KEDA; a ScaledObject (accepted by KEDA's own CRD schema)
    once KEDA is installed, and the HPA goes; actuator HPA brings it back. Explicit KEDA without
    its CRD says so."""
    body = sample("minimal")
    body["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 4}
    apply(cluster, namespace, body)
    wait_for(lambda: get(cluster, namespace, "hpa", "smollm2"), timeout=TIMEOUT, what="the HPA")
    crd = install_crd(cluster, "scaledobjects.keda.sh")
    try:
        scaled = wait_for(
            lambda: get(cluster, namespace, "scaledobjects.keda.sh", "smollm2"),
            timeout=TIMEOUT,
            what="the ScaledObject",
        )
        trigger = scaled["spec"]["triggers"][0]
        assert trigger["metadata"]["serverAddress"] == running_operator.settings.prometheus_url
        assert trigger["metadata"]["ignoreNullValues"] == "false"
        assert scaled["spec"]["fallback"]["behavior"] == "currentReplicasIfHigher"
        wait_for(
            lambda: get(cluster, namespace, "hpa", "smollm2") is None,
            timeout=TIMEOUT,
            what="the HPA gone: one autoscaler per target",
        )
        wait_for(
            lambda: (
                ((get(cluster, namespace, "modeldeployment", "smollm2") or {}).get("status") or {})
                .get("resolved", {})
                .get("actuator")
                == "KEDA"
            ),
            timeout=TIMEOUT,
            what="status.resolved.actuator KEDA",
        )
        # No KEDA controller runs here: it has not reported, and status says exactly that.
        pending = wait_condition(cluster, namespace, "smollm2", "AutoscalerReady", "Unknown")
        assert "KEDA has not reported" in pending["message"]
        # The schema is KEDA's: what it does not know is refused, so what we apply is valid.
        scaled["spec"]["fallback"]["behavior"] = "scaleToZero"
        refused = cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", input=json.dumps(scaled), check=False
        )
        assert refused.returncode != 0
        assert "spec.fallback.behavior" in refused.stderr

        # Scale to zero, opt-in: the ScaledObject idles at 0 and wakes on the activation query.
        body["spec"]["autoscaling"]["actuator"] = "KEDA"
        body["spec"]["autoscaling"]["scaleToZero"] = {
            "activationQuery": 'sum(rate(traefik_service_requests_total{service=~"x-.*"}[1m]))'
        }
        apply(cluster, namespace, body)
        idle = wait_for(
            lambda: (
                (found := get(cluster, namespace, "scaledobjects.keda.sh", "smollm2"))
                and found["spec"].get("idleReplicaCount") == 0
                and found
            ),
            timeout=TIMEOUT,
            what="the ScaledObject with idleReplicaCount 0",
        )
        assert idle["spec"]["triggers"][-1]["name"] == "activation"

        del body["spec"]["autoscaling"]["scaleToZero"]
        body["spec"]["autoscaling"]["actuator"] = "HPA"
        apply(cluster, namespace, body)
        wait_for(lambda: get(cluster, namespace, "hpa", "smollm2"), timeout=TIMEOUT, what="HPA")
        wait_for(
            lambda: get(cluster, namespace, "scaledobjects.keda.sh", "smollm2") is None,
            timeout=TIMEOUT,
            what="the ScaledObject gone",
        )
    finally:
        cluster.kubectl("delete", "-f", str(crd), "--wait=true", "--timeout=60s", check=False)
    body["spec"]["autoscaling"]["actuator"] = "KEDA"
    apply(cluster, namespace, body)
    missing = wait_condition(
        cluster, namespace, "smollm2", "AutoscalerReady", "False", reason="CRDNotInstalled"
    )
    assert "scaledobjects.keda.sh is not installed" in missing["message"]


def test_slo_alerts_become_a_prometheus_rule_once_its_crd_exists(
    cluster: Cluster, namespace: str, running_operator: Any
) -> None:
    body = sample("minimal")
    body["spec"]["slo"] = {
        "availability": {"objective": 99.5},
        "timeToFirstToken": {"objective": 99, "thresholdSeconds": 2.5},
    }
    apply(cluster, namespace, body)
    missing = wait_condition(
        cluster, namespace, "smollm2", "MonitoringReady", "False", reason="CRDNotInstalled"
    )
    assert "prometheusrules.monitoring.coreos.com is not installed" in missing["message"]
    crd = install_crd(cluster, "prometheusrules.monitoring.coreos.com")
    try:
        wait_condition(
            cluster, namespace, "smollm2", "MonitoringReady", "True", reason="PrometheusRuleApplied"
        )
        rule = get(cluster, namespace, "prometheusrules.monitoring.coreos.com", "smollm2") or {}
        labels = rule["metadata"]["labels"]
        assert labels.items() >= running_operator.settings.rule_labels.items()
        (group,) = rule["spec"]["groups"]
        alerts = [r for r in group["rules"] if "alert" in r]
        assert len(alerts) == 8  # two objectives x the workbook's four window pairs
        del body["spec"]["slo"]
        apply(cluster, namespace, body)
        wait_gone(
            cluster,
            namespace,
            "prometheusrules.monitoring.coreos.com",
            "smollm2",
            "PrometheusRule deleted once the SLO is gone",
        )
    finally:
        cluster.kubectl("delete", "-f", str(crd), "--wait=false", check=False)


def test_more_gpus_than_any_node_has_is_insufficient_gpu(cluster: Cluster, namespace: str) -> None:
    body = sample("minimal")
    body["spec"]["accelerator"] = {"type": H100, "count": 16}
    apply(cluster, namespace, body)
    ready = wait_condition(
        cluster, namespace, "smollm2", "Ready", "False", reason="InsufficientGPU"
    )
    (pod,) = pods(cluster, namespace, "smollm2")
    assert pod["metadata"]["name"] in ready["message"]
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    row = cluster.kubectl("get", "md", "smollm2", "-n", namespace, "--no-headers").stdout
    assert row.split()[1:4] == ["False", "InsufficientGPU", "0/1"]
    assert argo_cd_health(cluster, namespace, "smollm2") == "Degraded"

    # ... and `kubectl describe` tells the same story in its Events.
    def described_events() -> str | None:
        out = cluster.kubectl("describe", "md", "smollm2", "-n", namespace).stdout
        events = out.partition("Events:")[2]
        return events if "InsufficientGPU" in events else None

    events = wait_for(
        described_events, timeout=TIMEOUT, what="a Warning InsufficientGPU event on the md"
    )
    assert "Warning" in events
    assert pod["metadata"]["name"] in events


def test_hand_edits_and_deletions_are_reverted(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, sample("minimal"))
    wait_condition(cluster, namespace, "smollm2", "Ready", "True")
    cluster.kubectl(
        "patch", "deployment", "smollm2", "-n", namespace, "--type=json",
        "-p", json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/args",
                           "value": ["--max-batch-size=1"]}]),
    )  # fmt: skip
    wait_for(
        lambda: (
            "--max-batch-size=32"
            in (get(cluster, namespace, "deployment", "smollm2") or {})["spec"]["template"]["spec"][
                "containers"
            ][0]["args"]
        ),
        timeout=TIMEOUT,
        what="hand-edited args restored",
    )
    uid = (get(cluster, namespace, "service", "smollm2") or {})["metadata"]["uid"]
    cluster.kubectl("delete", "service", "smollm2", "-n", namespace)
    wait_for(
        lambda: (
            (get(cluster, namespace, "service", "smollm2") or {}).get("metadata", {}).get("uid")
            not in (None, uid)
        ),
        timeout=TIMEOUT,
        what="deleted Service recreated",
    )


async def assert_steady(
    cluster: Cluster, namespace: str, name: str, versions: Callable[[], dict[str, str]]
) -> None:
    """Once the objects' resourceVersions hold still across several resyncs (every 3 s here),
    reconciling again, twice, makes no API write and changes nothing."""
    samples: list[dict[str, str]] = []

    def settled() -> bool:
        samples.append(versions())
        return len(samples) >= 4 and all(sample == samples[-1] for sample in samples[-4:])

    wait_for(settled, timeout=TIMEOUT, interval=2, what="resourceVersions stable for 6 s")
    client = AsyncClient(config=KubeConfig.from_file(cluster.kubeconfig), lazy=False)
    counting = CountingClient(client)
    try:
        kube = Kube(cast(AsyncClient, counting))
        for _ in range(2):
            live = await kube.get_model_deployment(namespace, name)
            assert live is not None
            outcome = await reconcile(kube, live)
            assert outcome.writes == 0, outcome
    finally:
        await client.close()
    assert sum(counting.writes.values()) == 0, counting.writes
    assert versions() == samples[-1]


async def test_second_reconcile_of_an_unchanged_resource_writes_nothing(
    cluster: Cluster, namespace: str
) -> None:
    body = sample("full")
    apply(cluster, namespace, body)
    wait_condition(cluster, namespace, "qwen-chat", "Ready", "True")
    wait_for(lambda: len(pods(cluster, namespace, "qwen-chat")) == 2, what="two pods")

    kinds = ("modeldeployment", "deployment", "service", "hpa", "pdb", "networkpolicy")

    def versions() -> dict[str, str]:
        return {
            kind: (get(cluster, namespace, kind, "qwen-chat") or {})["metadata"]["resourceVersion"]
            for kind in kinds
        }

    # The HPA (synced every 5 s) settles on "no custom metrics API"; status says so in words
    # (this cluster has no adapter), then nothing should move.
    autoscaler = wait_condition(
        cluster, namespace, "qwen-chat", "AutoscalerReady", "False", reason="MetricsAPIMissing"
    )
    assert autoscaler["message"].startswith("no adapter serves custom.metrics.k8s.io")
    # Serving, but it will not scale at peak: Argo CD must not call that Healthy.
    assert argo_cd_health(cluster, namespace, "qwen-chat") == "Degraded"
    await assert_steady(cluster, namespace, "qwen-chat", versions)


async def test_a_canary_in_place_still_writes_nothing_at_steady_state(
    cluster: Cluster, namespace: str
) -> None:
    body = sample("minimal")
    body["spec"]["replicas"] = 3
    body["spec"]["canary"] = {"image": "ghcr.io/modelplane/modelplane-server:0.2.0"}
    body["spec"]["canary"]["traffic"] = {"weight": 25}
    apply(cluster, namespace, body)
    name = body["metadata"]["name"]

    def canary() -> dict[str, Any]:
        md = get(cluster, namespace, "modeldeployment", name) or {}
        return dict(md.get("status", {}).get("canary") or {})

    # No Gateway API here: the split is the replica ratio, 1 canary pod of 4 ready pods.
    wait_for(lambda: canary().get("weight") == 25, timeout=TIMEOUT, what="the canary at 25%")
    split = condition(cluster, namespace, name, "TrafficSplit")
    assert (split["status"], split["reason"]) == ("False", "ApproximateSplit"), split
    stable = get(cluster, namespace, "deployment", name) or {}
    assert stable["spec"]["selector"]["matchLabels"]["modelplane.io/variant"] == "stable"
    kinds = ("modeldeployment", "deployment")
    names = {"modeldeployment": [name], "deployment": [name, f"{name}-canary"]}

    def versions() -> dict[str, str]:
        return {
            f"{kind}/{item}": (get(cluster, namespace, kind, item) or {})["metadata"][
                "resourceVersion"
            ]
            for kind in kinds
            for item in names[kind]
        }

    await assert_steady(cluster, namespace, name, versions)


def test_hpa_owned_replicas_are_never_overwritten(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, sample("full"))
    wait_condition(cluster, namespace, "qwen-chat", "Ready", "True")
    # Act as the autoscaler: scale the Deployment within [min, max] through its scale subresource.
    cluster.kubectl("scale", "deployment", "qwen-chat", "-n", namespace, "--replicas=3")
    # A spec change makes the operator re-apply the Deployment.
    cluster.kubectl(
        "patch", "md", "qwen-chat", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"server": {"maxQueue": 1000}}}),
    )  # fmt: skip
    wait_for(
        lambda: (
            "--max-queue=1000"
            in (get(cluster, namespace, "deployment", "qwen-chat") or {})["spec"]["template"][
                "spec"
            ]["containers"][0]["args"]
        ),
        timeout=TIMEOUT,
        what="the spec change applied",
    )
    wait_condition(cluster, namespace, "qwen-chat", "Ready", "True")
    assert (get(cluster, namespace, "deployment", "qwen-chat") or {})["spec"]["replicas"] == 3


def test_kubectl_scale_goes_through_the_scale_subresource(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, sample("minimal"))
    wait_condition(cluster, namespace, "smollm2", "Ready", "True")
    cluster.kubectl("scale", "md/smollm2", "-n", namespace, "--replicas=3")
    wait_for(
        lambda: (
            (get(cluster, namespace, "md", "smollm2") or {}).get("status", {}).get("ready") == "3/3"
        ),
        timeout=TIMEOUT,
        what="3/3 replicas ready",
    )
    scale = json.loads(
        cluster.kubectl(
            "get", "--raw",
            f"/apis/modelplane.io/v1alpha1/namespaces/{namespace}/modeldeployments/smollm2/scale",
        ).stdout
    )  # fmt: skip
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["replicas"] == 3
    assert "app.kubernetes.io/instance=smollm2" in scale["status"]["selector"]
    assert get(cluster, namespace, "pdb", "smollm2") is not None


def test_suspend_scales_to_zero_and_keeps_the_objects(cluster: Cluster, namespace: str) -> None:
    body = sample("full")
    apply(cluster, namespace, body)
    wait_condition(cluster, namespace, "qwen-chat", "Ready", "True")
    body["spec"]["suspend"] = True
    apply(cluster, namespace, body)
    wait_condition(cluster, namespace, "qwen-chat", "Ready", "True", reason="Suspended")
    assert argo_cd_health(cluster, namespace, "qwen-chat") == "Suspended"
    deployment = get(cluster, namespace, "deployment", "qwen-chat") or {}
    assert deployment["spec"]["replicas"] == 0
    wait_for(lambda: pods(cluster, namespace, "qwen-chat") == [], timeout=TIMEOUT, what="no pods")
    assert get(cluster, namespace, "service", "qwen-chat") is not None
    assert get(cluster, namespace, "hpa", "qwen-chat") is None
    assert get(cluster, namespace, "pdb", "qwen-chat") is None
    body["spec"]["suspend"] = False
    apply(cluster, namespace, body)
    wait_condition(cluster, namespace, "qwen-chat", "Ready", "True", reason="Serving")
    assert get(cluster, namespace, "hpa", "qwen-chat") is not None


def test_deleting_the_resource_removes_every_child(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, sample("full"))
    wait_condition(cluster, namespace, "qwen-chat", "Ready", "True")
    cluster.kubectl("delete", "md", "qwen-chat", "-n", namespace, "--wait=true", "--timeout=60s")
    kinds = ("deployment", "service", "hpa", "pdb", "networkpolicy")
    wait_for(
        lambda: all(get(cluster, namespace, kind, "qwen-chat") is None for kind in kinds),
        timeout=TIMEOUT,
        what="every child garbage-collected",
    )
    wait_for(lambda: pods(cluster, namespace, "qwen-chat") == [], timeout=TIMEOUT, what="no pods")


def test_pods_pass_the_restricted_pod_security_standard(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    apply(cluster, namespace, sample("minimal"))  # hf:// adds the download init container
    wait_condition(cluster, namespace, "smollm2", "Ready", "True", reason="Serving")


def test_rendered_children_are_valid_kubernetes_objects(cluster: Cluster, namespace: str) -> None:
    rendered = subprocess.run(
        ["modelplane-operator", "render", "-n", namespace, "-f", str(SAMPLES / "full.yaml")],
        env=cluster.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered
    )
    assert result.stdout.count("created (server dry run)") == 5


def test_unwatched_children_are_restored_by_the_resync(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, sample("full"))
    wait_condition(cluster, namespace, "qwen-chat", "Ready", "True")
    uid = (get(cluster, namespace, "networkpolicy", "qwen-chat") or {})["metadata"]["uid"]
    cluster.kubectl("delete", "networkpolicy", "qwen-chat", "-n", namespace)
    wait_for(
        lambda: (
            (get(cluster, namespace, "networkpolicy", "qwen-chat") or {})
            .get("metadata", {})
            .get("uid")
            not in (None, uid)
        ),
        timeout=TIMEOUT,
        what="deleted NetworkPolicy recreated by the resync",
    )

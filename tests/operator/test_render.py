"""Golden-file and property tests for the pure renderer (no cluster).

Set UPDATE_GOLDEN=1 to rewrite tests/operator/golden/*.yaml after an intended change, then review
the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane_operator import canary_control, server_contract
from modelplane_operator.kinds import OPTIONAL_CRDS, SERVICE_MONITOR
from modelplane_operator.models import DEFAULT_API_KEYS_KEY, ModelDeploymentSpec
from modelplane_operator.names import GPU_PRODUCT_LABEL
from modelplane_operator.render import Owner, Rendered, RenderOptions, render
from modelplane_operator.render.model import startup_budget_seconds

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
SAMPLES = ROOT / "crds" / "samples"
WITH_PROMETHEUS_OPERATOR = RenderOptions(installed_crds=frozenset(OPTIONAL_CRDS))
OWNER = Owner(name="demo", namespace="models", uid="00000000-0000-0000-0000-000000000001")


def sample_spec(name: str, **changes: Any) -> ModelDeploymentSpec:
    body = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    spec = dict(body["spec"])
    spec.update(changes)
    return ModelDeploymentSpec.model_validate(spec)


def spec_of(**fields: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"uri": "hf://org/model"}, **fields})


def by_kind(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {child["kind"]: child for child in rendered.children}


def server_container(rendered: Rendered) -> dict[str, Any]:
    container: dict[str, Any] = by_kind(rendered)["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


CASES: dict[str, tuple[ModelDeploymentSpec, RenderOptions]] = {
    "minimal": (sample_spec("minimal"), RenderOptions()),
    "full": (sample_spec("full"), WITH_PROMETHEUS_OPERATOR),
    "full-without-prometheus-operator": (sample_spec("full"), RenderOptions()),
    "suspended": (sample_spec("full", suspend=True), WITH_PROMETHEUS_OPERATOR),
    "pvc-gguf-cpu": (
        spec_of(
            model={"uri": "pvc://weights/llama/q4", "ggufFile": "llama.Q4_K_M.gguf"},
            accelerator={"count": 0, "cpu": 4, "memory": "8Gi"},
            replicas=3,
        ),
        RenderOptions(),
    ),
    "embedded-model": (spec_of(model={"uri": "/"}, accelerator={"count": 1}), RenderOptions()),
    # The canary as it starts: its Deployment and Service, no weight until its pods are ready.
    "canary": (
        sample_spec("canary"),
        RenderOptions(
            installed_crds=frozenset(OPTIONAL_CRDS),
            canary=canary_control.preview(sample_spec("canary")),
        ),
    ),
    "keda": (
        spec_of(
            autoscaling={
                "maxReplicas": 6,
                "minReplicas": 2,
                "targetQueueDepth": 4,
                "targetBatchFillPercent": 80,
            },
            slo={"endToEndLatency": {"objective": 95, "thresholdSeconds": 10}},
        ),
        RenderOptions(
            installed_crds=frozenset(OPTIONAL_CRDS),
            prometheus_url="http://prometheus.monitoring.svc:9090",
            rule_labels={"release": "kube-prometheus-stack"},
            measured_startup_seconds=45,
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden_file(case: str) -> None:
    spec, options = CASES[case]
    rendered = render(OWNER, spec, options)
    document = {
        "children": rendered.children,
        "resolved": rendered.resolved.model_dump(by_alias=True, exclude_none=True),
        "serviceMonitorSkipped": SERVICE_MONITOR in rendered.skipped,
    }
    text = yaml.safe_dump(document, sort_keys=False, width=100)
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}: run with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{golden} differs: run with UPDATE_GOLDEN=1 and review"


def test_render_is_deterministic() -> None:
    spec, options = CASES["full"]
    assert render(OWNER, spec, options) == render(OWNER, spec, options)


def test_children_carry_labels_and_a_controller_owner_reference() -> None:
    rendered = render(OWNER, sample_spec("full"), WITH_PROMETHEUS_OPERATOR)
    kinds = {child["kind"] for child in rendered.children}
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    }
    for child in rendered.children:
        metadata = child["metadata"]
        assert metadata["name"] == "demo"
        assert metadata["namespace"] == "models"
        for key in ("name", "instance", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in metadata["labels"]
        (reference,) = metadata["ownerReferences"]
        assert reference["controller"] is True
        assert reference["uid"] == OWNER.uid
        assert reference["kind"] == "ModelDeployment"


def test_gpu_placement_resources_and_toleration() -> None:
    rendered = render(OWNER, sample_spec("full"), RenderOptions())
    pod = by_kind(rendered)["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"][GPU_PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_cpu_only_pods_neither_request_nor_tolerate_gpus() -> None:
    rendered = render(OWNER, spec_of(accelerator={"count": 0}), RenderOptions())
    pod = by_kind(rendered)["Deployment"]["spec"]["template"]["spec"]
    assert "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]
    assert "--device=cpu" in pod["containers"][0]["args"]


def test_restricted_security_context() -> None:
    rendered = render(OWNER, spec_of(), RenderOptions())
    pod = by_kind(rendered)["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_probes_use_the_server_contract_and_grace_outlasts_the_drain() -> None:
    rendered = render(OWNER, spec_of(server={"drainTimeoutSeconds": 45}), RenderOptions())
    container = server_container(rendered)
    assert container["startupProbe"]["httpGet"]["path"] == server_contract.STARTUP_PATH
    assert container["livenessProbe"]["httpGet"]["path"] == server_contract.LIVENESS_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == server_contract.READINESS_PATH
    assert container["ports"] == [{"containerPort": 8000, "name": "http", "protocol": "TCP"}]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
    pod = by_kind(rendered)["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60
    assert pod["terminationGracePeriodSeconds"] > 45 + 5
    assert "--drain-timeout-s=45" in container["args"]


def test_startup_budget_scales_with_model_size_and_gpus() -> None:
    small = spec_of(model={"uri": "hf://o/m", "sizeGiB": 1})
    big = spec_of(model={"uri": "hf://o/m", "sizeGiB": 140})
    big_many_gpus = spec_of(model={"uri": "hf://o/m", "sizeGiB": 140}, accelerator={"count": 8})
    assert startup_budget_seconds(small, 1) < startup_budget_seconds(big, 140)
    assert startup_budget_seconds(big_many_gpus, 140) < startup_budget_seconds(big, 140)
    rendered = render(OWNER, big, RenderOptions())
    probe = server_container(rendered)["startupProbe"]
    budget = probe["failureThreshold"] * probe["periodSeconds"]
    assert budget == rendered.resolved.startup_probe_budget_seconds
    deadline = by_kind(rendered)["Deployment"]["spec"]["progressDeadlineSeconds"]
    assert deadline > budget
    override = spec_of(server={"startupTimeoutSeconds": 900})
    assert render(OWNER, override, RenderOptions()).resolved.startup_probe_budget_seconds == 900


def test_autoscaler_owns_replicas() -> None:
    rendered = render(OWNER, sample_spec("full"), RenderOptions())
    assert "replicas" not in by_kind(rendered)["Deployment"]["spec"]
    hpa = by_kind(rendered)["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 4)
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == server_contract.QUEUE_DEPTH_METRIC
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo"}


def test_batch_fill_target_is_a_fraction_of_the_batch() -> None:
    spec = spec_of(autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetBatchFillPercent": 80})
    hpa = by_kind(render(OWNER, spec, RenderOptions()))["HorizontalPodAutoscaler"]["spec"]
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == server_contract.BATCH_FILL_METRIC
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "800m"}


def test_suspend_scales_to_zero_and_drops_autoscaler_and_budget() -> None:
    rendered = render(OWNER, sample_spec("full", suspend=True), RenderOptions())
    kinds = by_kind(rendered)
    assert kinds["Deployment"]["spec"]["replicas"] == 0
    assert "HorizontalPodAutoscaler" not in kinds
    assert "PodDisruptionBudget" not in kinds
    assert "Service" in kinds


def test_disruption_budget_only_when_more_than_one_replica_can_exist() -> None:
    assert "PodDisruptionBudget" not in by_kind(render(OWNER, spec_of(), RenderOptions()))
    two = by_kind(render(OWNER, spec_of(replicas=2), RenderOptions()))
    assert two["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    off = spec_of(replicas=2, podDisruptionBudget={"enabled": False})
    assert "PodDisruptionBudget" not in by_kind(render(OWNER, off, RenderOptions()))


def test_service_monitor_needs_the_crd() -> None:
    spec = spec_of(monitoring={"serviceMonitor": True})
    without = render(OWNER, spec, RenderOptions())
    assert "ServiceMonitor" not in by_kind(without)
    assert SERVICE_MONITOR in without.skipped
    monitor = by_kind(render(OWNER, spec, WITH_PROMETHEUS_OPERATOR))["ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["path"] == server_contract.METRICS_PATH


def test_model_sources() -> None:
    hf = render(OWNER, spec_of(model={"uri": "hf://org/repo", "revision": "abc"}), RenderOptions())
    pod = by_kind(hf)["Deployment"]["spec"]["template"]["spec"]
    (download,) = pod["initContainers"]
    assert download["command"][:3] == ["hf", "download", "org/repo"]
    assert "--revision" in download["command"]
    assert "--model=/models/org/repo" in pod["containers"][0]["args"]
    pvc = render(OWNER, spec_of(model={"uri": "pvc://claim/sub/dir"}), RenderOptions())
    pod = by_kind(pvc)["Deployment"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "claim", "readOnly": True}
    assert "--model=/models/sub/dir" in pod["containers"][0]["args"]
    image = render(OWNER, spec_of(model={"uri": "file:///opt/model"}), RenderOptions())
    pod = by_kind(image)["Deployment"]["spec"]["template"]["spec"]
    assert "volumes" not in pod
    assert "--model=/opt/model" in pod["containers"][0]["args"]


def test_pod_template_overrides_merge_but_our_labels_win() -> None:
    spec = spec_of(
        podTemplate={
            "labels": {"app.kubernetes.io/instance": "hijack", "team": "a"},
            "nodeSelector": {"zone": "a"},
            "affinity": {"nodeAffinity": {}},
            "serviceAccountName": "reader",
            "priorityClassName": "high",
        },
        accelerator={"type": "NVIDIA-A100-SXM4-80GB"},
    )
    pod_template = by_kind(render(OWNER, spec, RenderOptions()))["Deployment"]["spec"]["template"]
    assert pod_template["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
    assert pod_template["metadata"]["labels"]["team"] == "a"
    pod = pod_template["spec"]
    assert pod["nodeSelector"] == {"zone": "a", GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert (pod["serviceAccountName"], pod["priorityClassName"]) == ("reader", "high")


def test_preview_without_uid_has_no_owner_reference() -> None:
    rendered = render(Owner(name="demo", namespace="models"), spec_of(), RenderOptions())
    assert all("ownerReferences" not in child["metadata"] for child in rendered.children)


def test_api_keys_mount_the_secret_key_read_only_and_pass_the_file() -> None:
    spec = spec_of(server={"apiKeys": {"secretName": "chat-keys", "key": "tenants"}})
    pod = by_kind(render(OWNER, spec, RenderOptions()))["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (volume,) = [volume for volume in pod["volumes"] if "secret" in volume]
    assert volume["secret"]["secretName"] == "chat-keys"
    (item,) = volume["secret"]["items"]
    assert item["key"] == "tenants"
    (mount,) = [mount for mount in container["volumeMounts"] if mount["name"] == volume["name"]]
    assert mount["readOnly"] is True
    key_file = f"{mount['mountPath']}/{item['path']}"
    assert f"{server_contract.FLAG_API_KEY_FILE}={key_file}" in container["args"]
    # The kubelet and Prometheus carry no key: probes and metrics stay on the open paths.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert not container[probe]["httpGet"]["path"].startswith(server_contract.OPENAI_BASE_PATH)


def test_api_keys_default_to_the_secrets_api_keys_key_and_are_off_when_unset() -> None:
    spec = spec_of(server={"apiKeys": {"secretName": "chat-keys"}})
    pod = by_kind(render(OWNER, spec, RenderOptions()))["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [volume for volume in pod["volumes"] if "secret" in volume]
    assert volume["secret"]["items"][0]["key"] == DEFAULT_API_KEYS_KEY
    container = server_container(render(OWNER, spec_of(), RenderOptions()))
    assert not any(arg.startswith(server_contract.FLAG_API_KEY_FILE) for arg in container["args"])


def test_the_canary_serves_with_stables_api_keys() -> None:
    spec = sample_spec("canary", server={"apiKeys": {"secretName": "chat-keys"}})
    rendered = render(
        OWNER,
        spec,
        RenderOptions(canary=canary_control.preview(spec)),
    )
    deployments = [child for child in rendered.children if child["kind"] == "Deployment"]
    assert len(deployments) == 2
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert any(
            arg.startswith(server_contract.FLAG_API_KEY_FILE)
            for arg in pod["containers"][0]["args"]
        ), deployment["metadata"]["name"]
        assert {"chat-keys"} == {
            volume["secret"]["secretName"] for volume in pod["volumes"] if "secret" in volume
        }

"""The apiserver enforces the CRD: invalid ModelDeployments are refused with messages naming the
field, unknown fields fail `kubectl apply` (strict field validation), and the samples are valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from testsupport import Cluster, wait_for

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modeldeployments.modelplane.io.yaml"
CASES = yaml.safe_load((ROOT / "tests" / "operator" / "invalid_specs.yaml").read_text())
INVALID = [(case["id"], case["patch"], case["field"]) for case in CASES["invalid"]]


@pytest.fixture(scope="module", autouse=True)
def installed_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.wait_established("modeldeployments.modelplane.io")


def manifest(spec: dict[str, Any], name: str = "probe") -> str:
    body = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }
    return yaml.safe_dump(body)


def server_dry_run(cluster: Cluster, namespace: str, text: str) -> tuple[int, str]:
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=text, check=False
    )
    return result.returncode, result.stderr + result.stdout


@pytest.mark.parametrize(("case", "patch", "field"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_resources_are_refused_naming_the_field(
    cluster: Cluster, namespace: str, case: str, patch: dict[str, Any], field: str
) -> None:
    code, output = server_dry_run(cluster, namespace, manifest({**CASES["valid"], **patch}))
    assert code != 0, f"{case} was accepted"
    assert field in output, output


def test_names_the_apiserver_takes_are_taken(cluster: Cluster, namespace: str) -> None:
    """The name rules are no stricter than Kubernetes': real-world names pass."""
    spec = {**CASES["valid"], **CASES["names_taken"]}
    code, output = server_dry_run(cluster, namespace, manifest(spec))
    assert code == 0, output


def test_unknown_fields_are_refused(cluster: Cluster, namespace: str) -> None:
    body = yaml.safe_load(manifest(CASES["valid"]))
    body["spec"]["gpus"] = 2
    body["spec"]["accelerator"] = {"count": 1, "vram": "80Gi"}
    code, output = server_dry_run(cluster, namespace, yaml.safe_dump(body))
    assert code != 0
    assert 'unknown field "spec.gpus"' in output
    assert 'unknown field "spec.accelerator.vram"' in output


def test_names_that_cannot_name_a_service_are_refused(cluster: Cluster, namespace: str) -> None:
    code, output = server_dry_run(cluster, namespace, manifest(CASES["valid"], name="9-lives"))
    assert code != 0
    assert "metadata.name" in output


@pytest.mark.parametrize("sample", ["minimal", "full", "canary"])
def test_samples_are_valid_and_defaulted(cluster: Cluster, namespace: str, sample: str) -> None:
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-o", "json",
        "-f", str(ROOT / "crds" / "samples" / f"{sample}.yaml"),
    )  # fmt: skip
    spec = json.loads(result.stdout)["spec"]
    # Structural defaults fill in omitted sections; the operator never writes them itself.
    assert spec["server"]["maxBatchSize"] >= 1
    assert spec["rollout"] == spec["rollout"] | {"maxSurge": 1, "maxUnavailable": 0}
    assert spec["service"]["port"] == 80


def explain(cluster: Cluster, field: str) -> str:
    """`kubectl explain`, polled: the apiserver publishes a (re)applied CRD's OpenAPI a moment
    after the CRD is Established."""
    result: str = wait_for(
        lambda: cluster.kubectl("explain", field, check=False).stdout,
        timeout=60,
        what=f"kubectl explain {field}",
    )
    return result


def test_kubectl_explain_teaches_the_api(cluster: Cluster) -> None:
    assert "nvidia.com/gpu.product" in explain(cluster, "modeldeployment.spec.accelerator.type")
    assert "HorizontalPodAutoscaler" in explain(cluster, "md.spec.autoscaling")


CACHE_CRD = ROOT / "crds" / "modelcaches.modelplane.io.yaml"


def cache_manifest(spec: dict[str, Any]) -> str:
    body = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelCache",
        "metadata": {"name": "probe"},
        "spec": spec,
    }
    return yaml.safe_dump(body)


def test_model_caches_are_validated_and_the_sample_is_defaulted(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CACHE_CRD))
    cluster.wait_established("modelcaches.modelplane.io")
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-o", "json",
        "-f", str(ROOT / "crds" / "samples" / "modelcache.yaml"),
    )  # fmt: skip
    spec = json.loads(result.stdout)["spec"]
    assert spec["source"]["revision"] == "main"
    assert spec["image"].startswith("ghcr.io/modelplane/modelplane-server:")
    refused = [
        ({"source": {"uri": "s3://bucket/model"}}, "spec.source.uri"),
        ({"source": {"uri": "hf://org/repo"}, "storage": {"size": "lots"}}, "spec.storage.size"),
        (
            {
                "source": {"uri": "hf://org/repo"},
                "storage": {"existingClaim": "weights", "storageClassName": "fast"},
            },
            "existingClaim and storageClassName",
        ),
    ]
    for spec_patch, words in refused:
        code, output = server_dry_run(cluster, namespace, cache_manifest(spec_patch))
        assert code != 0, spec_patch
        assert words in output, output

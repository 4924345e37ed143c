"""The Helm chart: lint, schema, install into the real cluster, and least-privilege RBAC.

The RBAC test is the cross-check STYLE.md asks for: every kind `modelplane-operator render` can
produce must be writable by the chart's ServiceAccount, and nothing beyond what the operator needs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from chartsupport import CHART, run_helm

from localcluster import REPO_ROOT
from testsupport import Cluster, wait_for


def rendered_kinds() -> set[tuple[str, str]]:
    """(apiGroup, plural) of every child the operator renders for the full and canary samples."""
    documents = []
    for sample in ("full", "canary"):
        out = subprocess.run(
            [
                str(Path(sys.executable).parent / "modelplane-operator"),
                "render",
                "-f",
                str(REPO_ROOT / "crds" / "samples" / f"{sample}.yaml"),
                "--assume-prometheus-operator",
                "--assume-gateway-api",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        documents += list(yaml.safe_load_all(out.stdout))
    kinds = set()
    for doc in documents:
        if not doc:
            continue
        group = doc["apiVersion"].rpartition("/")[0]
        kind = doc["kind"].lower()
        plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
        kinds.add((group, plural))
    return kinds


def test_lint_passes(helm: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_rejects_unknown_values(helm: Path) -> None:
    result = run_helm(helm, "template", "t", str(CHART), "--set", "replicaCount=2")
    assert result.returncode != 0
    assert "additional properties 'replicaCount' not allowed" in result.stderr


def test_namespaced_mode_requires_namespaces(helm: Path) -> None:
    result = run_helm(helm, "template", "t", str(CHART), "--set", "operator.clusterWide=false")
    assert result.returncode != 0
    assert "/operator/namespaces" in result.stderr


def test_pod_security_is_restricted_by_default(helm: Path) -> None:
    result = run_helm(helm, "template", "t", str(CHART))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def rendered(helm: Path, *sets: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with `--set` values, as documents."""
    arguments = [item for value in sets for item in ("--set", value)]
    result = run_helm(helm, "template", "t", str(CHART), *arguments)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_log_level_and_health_port_come_from_values(helm: Path) -> None:
    container = operator_container(rendered(helm, "operator.logLevel=warning", "health.port=9091"))
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MODELPLANE_OPERATOR_LOG_LEVEL"] == "warning"
    assert env["MODELPLANE_OPERATOR_HEALTH_PORT"] == "9091"
    assert {"name": "health", "containerPort": 9091} in container["ports"]
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    bad = run_helm(helm, "template", "t", str(CHART), "--set", "operator.logLevel=verbose")
    assert bad.returncode != 0
    assert "operator.logLevel" in bad.stderr or "/operator/logLevel" in bad.stderr


CRDS = ("modeldeployments.modelplane.io", "modelcaches.modelplane.io")


def adopt_kept_crd(cluster: Cluster, release: str, namespace: str) -> None:
    """What charts/modelplane/README.md tells users to do before re-installing over kept CRDs."""
    for name in CRDS:
        crd = f"crd/{name}"
        if cluster.kubectl("get", crd, check=False).returncode != 0:
            continue
        cluster.kubectl(
            "annotate",
            crd,
            "--overwrite",
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )
        cluster.kubectl("label", crd, "--overwrite", "app.kubernetes.io/managed-by=Helm")


@pytest.fixture(scope="module")
def installed(helm: Path, cluster: Cluster) -> Iterator[tuple[Cluster, str, str]]:
    namespace = f"modelplane-chart-{uuid.uuid4().hex[:6]}"
    env = cluster.env
    release = "mp"
    adopt_kept_crd(cluster, release, namespace)
    result = run_helm(
        helm,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
        env=env,
    )
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield cluster, namespace, f"{release}-modelplane"
    finally:
        run_helm(helm, "uninstall", release, "--namespace", namespace, env=env)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.k8s
def test_install_establishes_the_crd_and_runs_the_operator(
    installed: tuple[Cluster, str, str],
) -> None:
    cluster, namespace, fullname = installed
    cluster.wait_established("modeldeployments.modelplane.io")
    deployment = json.loads(
        cluster.kubectl("get", "deployment", fullname, "-n", namespace, "-o", "json").stdout
    )
    # Both replicas (the chart's default: a leader and a standby) are up after --wait.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["status"].get("readyReplicas") == 2
    # The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    explain = wait_for(
        lambda: cluster.kubectl("explain", "modeldeployment.spec", check=False).stdout,
        timeout=60,
        what="kubectl explain to know the CRD",
    )
    assert "accelerator" in explain


@pytest.mark.k8s
def test_rbac_covers_exactly_what_the_operator_writes(
    installed: tuple[Cluster, str, str],
) -> None:
    cluster, namespace, fullname = installed
    service_account = f"system:serviceaccount:{namespace}:{fullname}"

    def can(verb: str, resource: str, subresource: str = "") -> bool:
        # A SubjectAccessReview, not `kubectl auth can-i`: that needs the resource's CRD installed
        # (ServiceMonitor's usually is not) to resolve the group.
        plural, _, group = resource.partition(".")
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": service_account,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                "resourceAttributes": {
                    "namespace": "default",
                    "verb": verb,
                    "group": group,
                    "resource": plural,
                    "subresource": subresource,
                },
            },
        }
        out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review))
        return bool(json.loads(out.stdout)["status"].get("allowed"))

    kinds = rendered_kinds()
    assert ("apps", "deployments") in kinds
    for group, plural in kinds:
        resource = f"{plural}.{group}" if group else plural
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert can(verb, resource), f"the operator cannot {verb} {resource}"
    assert can("patch", "modeldeployments.modelplane.io", "status")
    # Least privilege: nothing the operator never does.
    assert not can("get", "secrets")
    assert not can("create", "pods")
    assert not can("delete", "modeldeployments.modelplane.io")
    assert not can("patch", "modeldeployments.modelplane.io")  # only their status
    assert not can("create", "clusterroles.rbac.authorization.k8s.io")
    assert not can("update", "deployments.apps")  # server-side apply patches; it never updates


def test_prometheus_url_and_rule_labels_reach_the_operators_settings(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values become environment variables the operator's own settings class parses."""
    from modelplane_operator.settings import OperatorSettings

    container = operator_container(
        rendered(
            helm,
            "prometheus.url=http://prometheus-operated.monitoring.svc:9090",
            "prometheusRule.labels.release=kube-prometheus-stack",
        )
    )
    for item in container["env"]:
        if "value" in item:  # not the downward API's (POD_NAMESPACE)
            monkeypatch.setenv(item["name"], item["value"])
    settings = OperatorSettings()
    assert settings.prometheus_url == "http://prometheus-operated.monitoring.svc:9090"
    assert settings.rule_labels == {"release": "kube-prometheus-stack"}
    bad = run_helm(helm, "template", "t", str(CHART), "--set", "prometheus.url=prometheus:9090")
    assert bad.returncode != 0


def test_two_replicas_elect_a_leader_with_a_pdb_and_spread_over_nodes(helm: Path) -> None:
    docs = rendered(helm)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    env = {item["name"]: item for item in pod["containers"][0]["env"]}
    assert env["MODELPLANE_OPERATOR_LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    lease_name = env["MODELPLANE_OPERATOR_LEASE_NAME"]["value"]
    spread = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    # The election's rights: that one Lease, in the release's namespace, and nothing more.
    (role,) = [d for d in docs if d["kind"] == "Role" and "leader" in d["metadata"]["name"]]
    named = [rule for rule in role["rules"] if rule.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease_name],
            "verbs": ["get", "update"],
        }
    ]

    single = rendered(helm, "replicas=1")
    deployment = next(d for d in single if d["kind"] == "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    env = {
        item["name"]: item
        for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELPLANE_OPERATOR_LEADER_ELECTION"]["value"] == "false"
    assert not [d for d in single if d["kind"] in {"PodDisruptionBudget", "Role"}]


def chart_with_a_new_field(destination: Path) -> Path:
    """A copy of the chart whose CRD has one more spec field, as a next release's would."""
    shutil.copytree(CHART, destination)
    template = destination / "templates" / "crd-modeldeployments.yaml"
    text = template.read_text()
    anchor = "            required:\n            - model\n            properties:\n"
    assert text.count(anchor) == 1
    added = (
        "              upgradeCanary:\n"
        "                type: string\n"
        "                description: A field only the upgraded chart's CRD has.\n"
    )
    template.write_text(text.replace(anchor, anchor + added))
    return destination


@pytest.mark.k8s
def test_helm_upgrade_upgrades_the_crd(
    helm: Path, installed: tuple[Cluster, str, str], tmp_path: Path
) -> None:
    """Helm never upgrades a chart's crds/ directory; ours is a template, so it does."""
    cluster, namespace, _ = installed
    body = {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "upgraded"},
        "spec": {"model": {"uri": "hf://o/m"}, "upgradeCanary": "yes"},
    }

    def dry_run() -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = cluster.kubectl(
            "apply", "--dry-run=server", "-n", "default", "-f", "-",
            input=json.dumps(body), check=False,
        )  # fmt: skip
        return result

    before = dry_run()
    assert before.returncode != 0
    assert 'unknown field "spec.upgradeCanary"' in before.stderr
    try:
        upgrade = run_helm(
            # The operator tier applies crds/ with kubectl; taking over fields another manager
            # applied needs --force-conflicts, as docs/operations.md tells users.
            helm, "upgrade", "mp", str(chart_with_a_new_field(tmp_path / "chart")),
            "-n", namespace, "--wait", "--timeout", "120s", "--force-conflicts", env=cluster.env,
        )  # fmt: skip
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        after = wait_for(
            lambda: (result := dry_run()).returncode == 0 and result,
            timeout=60,
            what="the upgraded CRD to accept spec.upgradeCanary",
        )
        assert "upgraded" in after.stdout
    finally:
        back = run_helm(
            helm, "upgrade", "mp", str(CHART), "-n", namespace, "--wait", "--timeout", "120s",
            env=cluster.env,
        )  # fmt: skip
        assert back.returncode == 0, back.stdout + back.stderr


@pytest.mark.k8s
def test_uninstall_keeps_the_crd(helm: Path, installed: tuple[Cluster, str, str]) -> None:
    # Runs last in this module: it uninstalls the release the tests above share.
    cluster, namespace, _ = installed
    uninstall = run_helm(helm, "uninstall", "mp", "-n", namespace, "--wait", env=cluster.env)
    assert uninstall.returncode == 0, uninstall.stderr
    assert cluster.kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout == ""
    for name in CRDS:
        crd = cluster.kubectl("get", "crd", name, check=False)
        assert crd.returncode == 0, f"uninstall deleted {name} (and every object of it)"

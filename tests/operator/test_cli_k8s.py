"""`modelplane-operator run` as a real process, under the least-privilege RBAC of
operator-rbac.yaml (a ServiceAccount token, not the admin): it reconciles, serves /healthz and
/metrics on the ports its settings name, and stops cleanly on SIGTERM. (No in-process operator in
this module, so the two never share a namespace.)"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testsupport import Cluster, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("modeldeployment_crd")]

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
RBAC = Path(__file__).parent / "operator-rbac.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def service_account_kubeconfig(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig that authenticates as a ServiceAccount bound to operator-rbac.yaml only."""
    binding = f"{namespace}-operator"
    cluster.kubectl("apply", "-f", str(RBAC))
    cluster.kubectl("create", "serviceaccount", "operator", "-n", namespace)
    cluster.kubectl(
        "create", "clusterrolebinding", binding, "--clusterrole=modelplane-operator-test",
        f"--serviceaccount={namespace}:operator",
    )  # fmt: skip
    token = cluster.kubectl("create", "token", "operator", "-n", namespace).stdout.strip()
    config = json.loads(cluster.kubectl("config", "view", "--raw", "-o", "json").stdout)
    for user in config["users"]:
        user["user"] = {"token": token}
    path = tmp_path / "operator.kubeconfig"
    path.write_text(json.dumps(config))
    try:
        yield path
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, check=False)


@pytest.fixture
def operator_process(
    cluster: Cluster, namespace: str, tmp_path: Path, service_account_kubeconfig: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    metrics_port, health_port = free_port(), free_port()
    env = {
        **cluster.env,
        "KUBECONFIG": str(service_account_kubeconfig),
        "MODELPLANE_OPERATOR_METRICS_PORT": str(metrics_port),
        "MODELPLANE_OPERATOR_HEALTH_PORT": str(health_port),
    }
    script = Path(sys.executable).parent / "modelplane-operator"
    with (tmp_path / "operator.log").open("wb") as log:
        process = subprocess.Popen(
            [str(script), "run", "--namespace", namespace], env=env, stdout=log, stderr=log
        )
    try:
        yield process, metrics_port, health_port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def http_ok(url: str) -> str | None:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def test_console_script_reconciles_and_exposes_health_and_metrics(
    cluster: Cluster,
    namespace: str,
    operator_process: tuple[subprocess.Popen[bytes], int, int],
    tmp_path: Path,
) -> None:
    process, metrics_port, health_port = operator_process
    wait_for(lambda: http_ok(f"http://127.0.0.1:{health_port}/healthz"), what="/healthz")
    # The full sample makes every kind of child, so every rule of the role is exercised.
    cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "full.yaml"))
    wait_for(
        lambda: cluster.kubectl(
            "get", "md", "qwen-chat", "-n", namespace,
            "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ).stdout
        == "True",
        what="Ready=True",
    )  # fmt: skip

    def metrics() -> str | None:
        text = http_ok(f"http://127.0.0.1:{metrics_port}/metrics")
        ready = 'modelplane_operator_model_deployments{ready="True"} 1.0'
        return text if text and ready in text else None

    text = wait_for(metrics, what="metrics counting one Ready ModelDeployment")
    assert 'modelplane_operator_reconciles_total{result="success"}' in text
    assert "modelplane_operator_reconcile_duration_seconds_bucket" in text
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    log = (tmp_path / "operator.log").read_text()
    assert "forbidden" not in log.lower(), log

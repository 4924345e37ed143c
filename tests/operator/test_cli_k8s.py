"""`modelplane-operator run` as a real process: it reconciles, serves /healthz and /metrics on the
ports its settings name, and stops cleanly on SIGTERM. (No in-process operator in this module, so
the two never share a namespace.)"""

from __future__ import annotations

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

MINIMAL = Path(__file__).resolve().parents[2] / "crds" / "samples" / "minimal.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def operator_process(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    metrics_port, health_port = free_port(), free_port()
    env = {
        **cluster.env,
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
) -> None:
    process, metrics_port, health_port = operator_process
    wait_for(lambda: http_ok(f"http://127.0.0.1:{health_port}/healthz"), what="/healthz")
    cluster.kubectl("apply", "-n", namespace, "-f", str(MINIMAL))
    wait_for(
        lambda: cluster.kubectl(
            "get", "md", "smollm2", "-n", namespace,
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

"""`hack/cluster.sh` lifecycle: one cluster per state dir; `down` stops exactly what `up` began."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import localcluster

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


def cluster_sh(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MODELPLANE_CLUSTER_DIR=str(state_dir), MODELPLANE_CLUSTER_NODES="2")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "cluster.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_up_twice_reuses_and_down_stops_exactly_its_processes(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = cluster_sh(state_dir, "up")
    assert first.returncode == 0, first.stderr
    kubeconfig = state_dir / "kubeconfig"
    assert first.stdout.strip() == f"export KUBECONFIG={kubeconfig}"
    try:
        state = json.loads((state_dir / "state.json").read_text())
        assert set(state["pids"]) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        }
        data_dir = Path(state["data_dir"])
        assert data_dir.is_dir()

        second = cluster_sh(state_dir, "up")
        assert second.returncode == 0
        assert "already running" in second.stderr
        assert json.loads((state_dir / "state.json").read_text())["pids"] == state["pids"]

        status = cluster_sh(state_dir, "status")
        assert status.returncode == 0
        report = json.loads(status.stdout)
        assert report["running"] is True
        assert report["nodes"] == 2
        assert report["total_rss_mib"] > 0

        env_line = cluster_sh(state_dir, "env")
        assert env_line.stdout.strip() == f"export KUBECONFIG={kubeconfig}"
    finally:
        down = cluster_sh(state_dir, "down")
    assert down.returncode == 0, down.stderr
    for name, pid in state["pids"].items():
        assert not localcluster.pid_alive(pid, state["binaries"][name]), f"{name} still runs"
    assert not data_dir.exists()
    assert not kubeconfig.exists()
    assert cluster_sh(state_dir, "status").returncode == 3

"""The torch thread count follows the container's CPU limit, not the host's core count."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane_server.model.cpus import cgroup_cpu_limit, torch_threads


def cgroup_v2(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n", encoding="ascii")
    return tmp_path


def cgroup_v1(tmp_path: Path, quota: int, period: int) -> Path:
    (tmp_path / "cpu").mkdir(parents=True)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n", encoding="ascii")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n", encoding="ascii")
    return tmp_path


@pytest.mark.parametrize(
    ("cpu_max", "limit"),
    [("200000 100000", 2.0), ("250000 100000", 2.5), ("50000 100000", 0.5), ("max 100000", None)],
)
def test_cgroup_v2_quota(tmp_path: Path, cpu_max: str, limit: float | None) -> None:
    assert cgroup_cpu_limit(cgroup_v2(tmp_path, cpu_max)) == limit


def test_cgroup_v1_quota_and_unlimited(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(cgroup_v1(tmp_path / "a", 300000, 100000)) == 3.0
    assert cgroup_cpu_limit(cgroup_v1(tmp_path / "b", -1, 100000)) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None


def test_a_pod_limit_of_2_on_a_64_core_node_gives_2_threads(tmp_path: Path) -> None:
    root = cgroup_v2(tmp_path, "200000 100000")
    assert torch_threads(0, environ={}, root=root, cpus=64) == 2


def test_a_fractional_limit_rounds_up_and_never_goes_below_one(tmp_path: Path) -> None:
    assert torch_threads(0, environ={}, root=cgroup_v2(tmp_path, "250000 100000"), cpus=64) == 3
    (tmp_path / "cpu.max").write_text("10000 100000", encoding="ascii")
    assert torch_threads(0, environ={}, root=tmp_path, cpus=64) == 1


def test_without_a_limit_the_usable_cpus_count(tmp_path: Path) -> None:
    assert torch_threads(0, environ={}, root=cgroup_v2(tmp_path, "max 100000"), cpus=6) == 6
    # a cpuset smaller than the quota wins too
    (tmp_path / "cpu.max").write_text("800000 100000", encoding="ascii")
    assert torch_threads(0, environ={}, root=tmp_path, cpus=4) == 4


def test_omp_num_threads_and_the_flag_take_precedence(tmp_path: Path) -> None:
    root = cgroup_v2(tmp_path, "200000 100000")
    assert torch_threads(0, environ={"OMP_NUM_THREADS": "1"}, root=root, cpus=64) == 1
    assert torch_threads(5, environ={"OMP_NUM_THREADS": "1"}, root=root, cpus=64) == 5
    # a malformed OMP_NUM_THREADS is ignored rather than crashing the server
    assert torch_threads(0, environ={"OMP_NUM_THREADS": "lots"}, root=root, cpus=64) == 2

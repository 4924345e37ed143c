"""The network guard: it accepts only a namespace whose only interface is lo and that has no route
out, and the real check refuses in a namespace that has another interface."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dataplane.isolation import (
    NetworkView,
    NotIsolatedError,
    isolation_problem,
    require_isolated_network,
)

HACK = Path(__file__).resolve().parents[2] / "hack"


def no_route(_: str) -> bool:
    return False


def test_only_lo_without_routes_is_isolated() -> None:
    assert isolation_problem(NetworkView(interfaces=["lo"], routable=no_route)) is None


def test_another_interface_is_refused_by_name() -> None:
    problem = isolation_problem(NetworkView(interfaces=["lo", "eth0"], routable=no_route))
    assert problem is not None
    assert "eth0" in problem
    with pytest.raises(NotIsolatedError, match=r"refusing to start the gateway.*eth0"):
        require_isolated_network("the gateway", NetworkView(["lo", "eth0"], no_route))


def test_a_route_out_is_refused_even_with_only_lo() -> None:
    problem = isolation_problem(NetworkView(interfaces=["lo"], routable=lambda a: a == "8.8.8.8"))
    assert problem == "a route exists to 8.8.8.8"


@pytest.mark.dataplane
def test_the_test_run_itself_is_isolated() -> None:
    """hack/test.sh runs the suite in a namespace of its own: the real check passes here."""
    require_isolated_network("this test")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_real_check_refuses_in_a_namespace_with_a_second_interface() -> None:
    """A namespace of its own with a tun interface beside lo: `python -m dataplane check` (what
    the scripts ask before starting anything) exits 1 and says why."""
    script = (
        "ip link set lo up && ip tuntap add probe0 mode tun && "
        f"PYTHONPATH={HACK} {sys.executable} -m dataplane check"
    )
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "refusing to start the data plane" in result.stderr
    assert "probe0" in result.stderr

"""The network rule, enforced: the data plane runs only inside a network namespace whose only
interface is `lo`.

Pods of the local cluster get addresses (10.244.x.y) that would be private addresses of the real
network anywhere else. Inside a namespace made by the test run or demo with `lo` as its only
interface, those addresses are local and nothing can leave: any other destination is unreachable.
Everything that starts pod processes, the gateway, Prometheus or the metrics adapter calls
`require_isolated_network()` first, so no run can send a packet outside such a namespace.

The check asks the kernel, not the filesystem: `socket.if_nameindex()` lists the interfaces of the
calling process's own network namespace (a stale `/sys` mount would still show the host's), and a
UDP `connect()` to an outside address is a route lookup that sends nothing.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# The address the harness gives `lo` inside the namespace; pods and the gateway live under it.
NAMESPACE_ADDRESS = "10.244.0.1"
NAMESPACE_PREFIX = 16
# One public and one private address: a route to either means packets could leave.
OUTSIDE_PROBES = ("8.8.8.8", "192.168.1.1")


class NotIsolatedError(RuntimeError):
    """Raised instead of starting anything that serves or sends traffic outside the namespace."""


@dataclass(frozen=True)
class NetworkView:
    """What the check looks at, injectable so the decision itself is a pure function."""

    interfaces: Sequence[str]
    routable: Callable[[str], bool]


def _routable(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))  # a route lookup; UDP connect sends no packet
        except OSError as error:
            if error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return False
            raise
    return True


def current_view() -> NetworkView:
    return NetworkView(
        interfaces=[name for _, name in socket.if_nameindex()],
        routable=_routable,
    )


def isolation_problem(view: NetworkView) -> str | None:
    """Why this network namespace is not an isolated one, or None when it is."""
    others = [name for name in view.interfaces if name != "lo"]
    if others:
        return f"interfaces other than lo are present: {', '.join(sorted(others))}"
    if "lo" not in view.interfaces:
        return "no loopback interface"
    reachable = [address for address in OUTSIDE_PROBES if view.routable(address)]
    if reachable:
        return f"a route exists to {', '.join(reachable)}"
    return None


def require_isolated_network(what: str, view: NetworkView | None = None) -> None:
    """Refuse to start `what` unless this process runs in a namespace with only `lo`."""
    problem = isolation_problem(view or current_view())
    if problem is not None:
        raise NotIsolatedError(
            f"refusing to start {what}: this process is not inside an isolated network namespace "
            f"({problem}). Run it through hack/test.sh, hack/demo.sh or `hack/cluster.sh shell`, "
            "which create a namespace whose only interface is lo."
        )

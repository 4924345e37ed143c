"""High availability and chaos, on a control plane of this module's own (its apiserver and etcd
get killed): two operator replicas elect a leader on a Lease; the leader is killed with SIGKILL
while it reconciles 100 ModelDeployments and the standby takes over; the apiserver is down for
30 s; etcd is killed and restarted. Each time every ModelDeployment converges with exactly its own
children, status tells the truth, and the steady state writes nothing.

Who wrote what, and when, comes from the apiserver's own audit log (writes at Metadata level,
`hack/localcluster.py`), not from the operator's logs: each replica authenticates as its own
ServiceAccount, so the log tells their writes apart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import localcluster
from testsupport import Cluster, cluster_env, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"  # both CRDs; `kubectl apply -f` skips crds/samples/
RBAC = ROOT / "tests" / "operator" / "operator-rbac.yaml"
NAMESPACE = "test-chaos"
SYSTEM = "modelplane-system"
LEASE = "modelplane-operator"
COUNT = 100
WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# Convergence bounds (the measured times go to BENCHMARKS.md).
CONVERGE_S = 240
# The standby takes over once the lease (15 s) has run out on its clock, at its next try (2 s).
TAKEOVER_MAX_S = 15 + 2 + 5


@dataclass
class Chaos:
    cluster: Cluster
    local: localcluster.LocalCluster
    audit: Path
    kubeconfigs: dict[str, Path]
    logs: Path
    operators: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_operator(self, identity: str) -> subprocess.Popen[bytes]:
        env = {
            **self.cluster.env,
            "KUBECONFIG": str(self.kubeconfigs[identity]),
            "MODELPLANE_OPERATOR_LEADER_ELECTION": "true",
            "MODELPLANE_OPERATOR_LEASE_NAME": LEASE,
            "MODELPLANE_OPERATOR_LEASE_NAMESPACE": SYSTEM,
            "MODELPLANE_OPERATOR_IDENTITY": identity,
            "MODELPLANE_OPERATOR_RESYNC_SECONDS": "5",
            "MODELPLANE_OPERATOR_RETRY_DELAY_SECONDS": "1",
            "MODELPLANE_OPERATOR_METRICS_PORT": "0",
            "MODELPLANE_OPERATOR_HEALTH_PORT": "0",
        }
        script = Path(sys.executable).parent / "modelplane-operator"
        with (self.logs / f"operator-{identity}.log").open("ab") as log:
            process = subprocess.Popen(
                [str(script), "run", "--namespace", NAMESPACE], env=env, stdout=log, stderr=log
            )
        self.operators[identity] = process
        return process

    def holder(self) -> str | None:
        result = self.cluster.kubectl(
            "get", "lease", LEASE, "-n", SYSTEM, "-o", "jsonpath={.spec.holderIdentity}",
            check=False,
        )  # fmt: skip
        return result.stdout.strip() or None if result.returncode == 0 else None

    def writes(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The operator replicas' writes in the audit log (leases left out), oldest first."""
        found = []
        for line in self.audit.read_text().splitlines():
            event = json.loads(line)
            user = event.get("user", {}).get("username", "")
            ref = event.get("objectRef") or {}
            if (
                event.get("verb") in WRITES
                and user.startswith(f"system:serviceaccount:{SYSTEM}:")
                and ref.get("resource") != "leases"
                and _seconds(event["requestReceivedTimestamp"]) >= since
            ):
                found.append(event)
        return found

    def log_of(self, identity: str) -> str:
        return (self.logs / f"operator-{identity}.log").read_text(errors="replace")[-3000:]


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _kubeconfig_for(cluster: Cluster, account: str, path: Path) -> Path:
    cluster.kubectl("create", "serviceaccount", account, "-n", SYSTEM)
    cluster.kubectl(
        "create", "clusterrolebinding", account, "--clusterrole=modelplane-operator-test",
        f"--serviceaccount={SYSTEM}:{account}",
    )  # fmt: skip
    token = cluster.kubectl(
        "create", "token", account, "-n", SYSTEM, "--duration=2h"
    ).stdout.strip()
    config = json.loads(cluster.kubectl("config", "view", "--raw", "-o", "json").stdout)
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    directory = tmp_path_factory.mktemp("chaos-cluster")
    local = localcluster.LocalCluster(directory, pod_cidr="10.244.128.0/18")
    state = local.up(nodes=2)
    kubeconfig = Path(state.kubeconfig)
    cluster = Cluster(kubeconfig, cluster_env(kubeconfig))
    plane = Chaos(
        cluster=cluster,
        local=local,
        audit=Path(state.data_dir) / "audit.log",
        kubeconfigs={},
        logs=directory,
    )
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
        cluster.wait_established("modeldeployments.modelplane.io")
        cluster.wait_established("modelcaches.modelplane.io")
        cluster.kubectl("apply", "-f", str(RBAC))
        for name in (SYSTEM, NAMESPACE):
            cluster.kubectl("create", "namespace", name)
        for identity in ("a", "b"):
            plane.kubeconfigs[identity] = _kubeconfig_for(
                cluster, f"operator-{identity}", directory / f"{identity}.kubeconfig"
            )
        yield plane
    finally:
        for process in plane.operators.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        local.down(quiet=True)


def model_deployment(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"md-{index:03d}", "namespace": NAMESPACE},
        "spec": {
            # The model in the image: no download init container (kwok runs nothing anyway).
            "model": {"uri": "/"},
            "accelerator": {"count": 0, "cpu": "10m", "memory": "16Mi"},
        },
    }


def listed(cluster: Cluster, kind: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", kind, "-n", NAMESPACE, "-o", "json", timeout=120).stdout
    )["items"]
    return items


def unconverged(cluster: Cluster, count: int) -> list[str]:
    """What keeps the ModelDeployments from having converged: each must be Ready for its current
    generation, with exactly one Deployment and one Service, each owned by it (no duplicate, no
    orphan). Empty when they have."""
    mds = listed(cluster, "modeldeployments")
    problems = [] if len(mds) == count else [f"{len(mds)} of {count} ModelDeployments"]
    for md in mds:
        status = md.get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        stale = status.get("observedGeneration") != md["metadata"]["generation"]
        if ready.get("status") != "True" or stale:
            problems.append(
                f"{md['metadata']['name']}: Ready={ready.get('status')} {ready.get('reason')} "
                f"{ready.get('message', '')[:120]}{' (stale generation)' if stale else ''}"
            )
    uids = {md["metadata"]["uid"]: md["metadata"]["name"] for md in mds}
    for kind in ("deployments", "services"):
        children = listed(cluster, kind)
        for child in children:
            refs = list(child["metadata"].get("ownerReferences", []))
            if len(refs) != 1 or uids.get(refs[0]["uid"]) != child["metadata"]["name"]:
                problems.append(f"{kind}/{child['metadata']['name']} owned by {refs}")
        if len(children) != count:
            problems.append(f"{len(children)} {kind}")
    return problems


def converged(cluster: Cluster, count: int) -> bool:
    return not unconverged(cluster, count)


def wait_converged(chaos: Chaos, what: str, extra: Any = None) -> None:
    """Wait for convergence (and `extra()`); on timeout say what was left and the leader's log."""
    try:
        wait_for(
            lambda: converged(chaos.cluster, COUNT) and (extra is None or extra()),
            timeout=CONVERGE_S,
            interval=2,
            what=what,
        )
    except AssertionError as error:
        left = unconverged(chaos.cluster, COUNT)
        raise AssertionError(
            f"{error}\n{len(left)} problems, first: {left[:8]}\nb's log:\n{chaos.log_of('b')}"
        ) from None


def quiet_writes(chaos: Chaos, seconds: float) -> list[dict[str, Any]]:
    """The operators' writes over `seconds` of steady state (several resyncs of 5 s)."""
    since = time.time()
    time.sleep(seconds)
    return chaos.writes(since)


def describe(events: list[dict[str, Any]]) -> list[str]:
    return [
        f"{e['user']['username'].rsplit(':', 1)[-1]} {e['verb']} "
        f"{(e.get('objectRef') or {}).get('resource')}/{(e.get('objectRef') or {}).get('name')}"
        f"{'/' + e['objectRef']['subresource'] if e['objectRef'].get('subresource') else ''}"
        for e in events[:10]
    ]


def assert_no_storm(writes: list[dict[str, Any]], edited: str) -> None:
    """After an outage: children were written only for the one edited meanwhile (nothing else
    changed), and status at most twice per ModelDeployment (it may truthfully change, e.g. while
    the node lifecycle controller catches up), never a write per resync."""
    children = [
        w
        for w in writes
        if (w.get("objectRef") or {}).get("resource") not in {"modeldeployments", "events"}
    ]
    unrelated = [w for w in children if not w["objectRef"].get("name", "").startswith(edited)]
    assert unrelated == [], describe(unrelated)
    statuses = [w for w in writes if (w.get("objectRef") or {}).get("subresource") == "status"]
    assert len(statuses) <= 2 * COUNT, describe(statuses)


@pytest.mark.timeout(600)
def test_the_standby_takes_over_from_a_killed_leader_and_two_never_reconcile_at_once(
    chaos: Chaos,
) -> None:
    cluster = chaos.cluster
    a = chaos.start_operator("a")
    wait_for(lambda: chaos.holder() == "a", timeout=60, what="a leading")
    chaos.start_operator("b")
    document = json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [model_deployment(i) for i in range(COUNT)]}
    )
    created = time.time()
    cluster.kubectl("apply", "--server-side", "-f", "-", input=document, timeout=120)

    # Kill the leader in the middle of the work: some children written, not all.
    def some_done() -> bool:
        return len(listed(cluster, "deployments")) >= 10

    wait_for(some_done, timeout=120, interval=0.2, what="the leader partway through")
    os.kill(a.pid, signal.SIGKILL)
    killed = time.time()
    a.wait(timeout=30)
    done_by_a = len(listed(cluster, "deployments"))

    wait_for(
        lambda: chaos.holder() == "b",
        timeout=TAKEOVER_MAX_S,
        interval=0.2,
        what=f"b taking over within {TAKEOVER_MAX_S} s\n{chaos.log_of('b')}",
    )
    took_over = time.time() - killed
    wait_converged(chaos, f"all {COUNT} converged under b")
    converged_s = time.time() - killed

    # No two replicas reconciled at once: a wrote only before it was killed; b only after it
    # held the Lease, and not at all while a led.
    writes = chaos.writes(created)
    by_a = [w for w in writes if w["user"]["username"].endswith(":operator-a")]
    by_b = [w for w in writes if w["user"]["username"].endswith(":operator-b")]
    assert by_a, "a wrote nothing before it was killed"
    assert by_b, "b wrote nothing after taking over"
    last_a = max(_seconds(w["requestReceivedTimestamp"]) for w in by_a)
    first_b = min(_seconds(w["requestReceivedTimestamp"]) for w in by_b)
    # A request a sent just before the SIGKILL may be read by the apiserver just after it.
    assert last_a <= killed + 1
    assert first_b > last_a, f"b wrote at {first_b} while a was still writing until {last_a}"
    assert first_b >= killed

    writes_after = quiet_writes(chaos, 15)
    assert writes_after == [], describe(writes_after)
    print(  # the numbers BENCHMARKS.md reports
        f"\nHA: a applied {done_by_a}/{COUNT} Deployments before SIGKILL; b took over "
        f"{took_over:.1f} s after the kill; all {COUNT} converged {converged_s:.1f} s after it; "
        f"{len(by_a)} writes by a, {len(by_b)} by b; 0 writes in 15 s of steady state"
    )


def ride_out(chaos: Chaos, component: str, down_s: float, edited: int) -> str:
    """Kill `component`, keep it down `down_s`, start it again, edit one ModelDeployment; the
    operator (the same process, still leading) reconciles the edit, everything converges, and
    nothing is written that did not need writing. Returns the numbers, for BENCHMARKS.md."""
    cluster, leader = chaos.cluster, chaos.operators["b"]
    wait_converged(chaos, "converged")
    chaos.local.stop(component)
    stopped = time.time()
    time.sleep(down_s)
    chaos.local.start(component)
    restarted = time.time()
    name, queue = f"md-{edited:03d}", 64 + edited
    cluster.kubectl(
        "patch", "md", name, "-n", NAMESPACE, "--type=merge",
        "-p", json.dumps({"spec": {"server": {"maxQueue": queue}}}),
    )  # fmt: skip

    def edit_applied() -> bool:
        deployment = json.loads(
            cluster.kubectl("get", "deployment", name, "-n", NAMESPACE, "-o", "json").stdout
        )
        return f"--max-queue={queue}" in json.dumps(deployment["spec"])

    wait_for(edit_applied, timeout=CONVERGE_S, interval=1, what=f"{name}'s edit reconciled")
    edit_s = time.time() - restarted

    # The cluster settles in its own time after an outage: the node lifecycle controller may mark
    # pods not Ready some seconds after the apiserver is back, and kwok readies them again. So
    # steady state is: converged, and no write by the operator for 15 s (3 resyncs), reached
    # within the bound; everything written meanwhile must be what changed, never a storm.
    def settled() -> bool:
        return converged(cluster, COUNT) and chaos.writes(time.time() - 15) == []

    wait_for(settled, timeout=CONVERGE_S, interval=2, what=f"steady state after {component}")
    converged_s = time.time() - restarted - 15
    assert leader.poll() is None, f"the operator restarted (or died) over the {component} outage"
    assert chaos.holder() == "b"
    writes = chaos.writes(restarted)
    assert_no_storm(writes, edited=name)
    statuses = sum(1 for w in writes if (w.get("objectRef") or {}).get("subresource") == "status")
    children = sum(
        1
        for w in writes
        if (w.get("objectRef") or {}).get("resource") not in {"modeldeployments", "events"}
    )
    return (
        f"{component} down {restarted - stopped:.0f} s: the edit reconciled {edit_s:.1f} s and "
        f"the last write came {converged_s:.1f} s after it came back; {children} child writes "
        f"(the edited one's), {statuses} status writes, then 0 for 15 s with all {COUNT} Ready"
    )


@pytest.mark.timeout(600)
def test_the_operator_rides_out_an_apiserver_outage_without_a_restart_or_a_storm(
    chaos: Chaos,
) -> None:
    print("\n" + ride_out(chaos, "kube-apiserver", down_s=30, edited=0))


@pytest.mark.timeout(600)
def test_the_operator_rides_out_an_etcd_restart(chaos: Chaos) -> None:
    print("\n" + ride_out(chaos, "etcd", down_s=10, edited=1))

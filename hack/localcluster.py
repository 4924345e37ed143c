"""A real, local Kubernetes cluster with simulated GPU nodes, for development and tests.

Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (binaries built by
hack/build-tools.sh) on 127.0.0.1 with free ports and a temporary data dir, registers simulated GPU
nodes, and writes a kubeconfig. With `--with` it adds the data plane (hack/dataplane): the local
kubelet that runs pods of the server image as real processes, Prometheus, prometheus-adapter behind
the custom metrics API, and Traefik as the Gateway. `hack/cluster.sh` wraps the command line;
tests/conftest.py uses `LocalCluster` directly. Standard library only (the data plane's processes
use the project's venv), so the control plane runs before the venv exists.

Everything runs inside a network namespace whose only interface is `lo` (`up` refuses otherwise):
pods, nodes and the gateway have 10.244.x.y addresses, local there and unreachable from it, and the
service range is on loopback (127.0.96.0/20), so nothing can dial an address outside.

State lives in one directory (default `.cluster/` at the repo root): `state.json` records the PIDs,
ports and data dir of a running cluster, so `down` stops exactly what `up` started.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dataplane.isolation import NAMESPACE_ADDRESS, NotIsolatedError, require_isolated_network
from dataplane.stages import with_local_kubelet

from dataplane import services

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".cluster"
ADMIN_USER = "modelplane-admin"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
# ClusterIPs on loopback: a client that dials one never reaches an address outside the namespace.
SERVICE_CIDR = "127.0.96.0/20"
KUBERNETES_SERVICE_IP = "127.0.96.1"
# Pod addresses, under the namespace's 10.244.0.0/16 on lo (10.244.0.1 is the namespace's own).
DEFAULT_POD_CIDR = "10.244.128.0/17"
# The data plane, in start order; `metrics` (the adapter) reads from `prometheus`.
COMPONENTS = ("kubelet", "prometheus", "metrics", "gateway")

# Simulated GPU fleet: two GPU types so node selection by `nvidia.com/gpu.product` is exercised.
GPU_PRODUCTS = ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB")
GPU_SHORT_NAMES = {"NVIDIA-H100-80GB-HBM3": "h100", "NVIDIA-A100-SXM4-80GB": "a100"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

# The controllers a serving operator relies on (garbage collection, rollouts, namespaces, HPA, PDB
# status, node lifecycle to lift the not-ready taint, binding claims to the volumes the local
# kubelet provisions and the protection finalizers' removal) and nothing that needs a real kubelet.
KCM_CONTROLLERS = (
    "garbagecollector,namespace,serviceaccount,serviceaccount-token,root-ca-cert-publisher,"
    "clusterrole-aggregation,deployment,replicaset,statefulset,daemonset,job,cronjob,"
    "horizontalpodautoscaling,disruption,endpointslice,nodelifecycle,podgc,ttl-after-finished,"
    "resourcequota,persistentvolume-binder,pvc-protection,pv-protection"
)


# The apiserver's audit log: writes only, at Metadata (who, what, when; no bodies), without the
# nodes' heartbeats. `audit.log` in the cluster's data directory.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  resources: [{group: coordination.k8s.io, resources: [leases]}]
  namespaces: [kube-node-lease]
- level: None
  verbs: [get, list, watch]
- level: Metadata
"""


# kwok readies a pod only while it is Pending. The node lifecycle controller marks a silent node's
# pods not Ready (an apiserver outage is enough), and a kubelet's status manager writes its own view
# back once the node reports again; kwok would leave them not Ready for good. This stage does what
# the kubelet does: a Running pod not being deleted whose Ready is not True is Ready again.
POD_READY_AGAIN_STAGE = """
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready-again
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values:
      - 'True'
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
"""


def _ca_file(state: ClusterState) -> str:
    return str(Path(state.data_dir) / "pki" / "ca.crt")


class ClusterError(RuntimeError):
    pass


@dataclass
class ClusterState:
    """What `down`, `status` and `env` need to know about a running cluster."""

    data_dir: str
    kubeconfig: str
    apiserver_url: str
    token: str
    pids: dict[str, int] = field(default_factory=dict)
    binaries: dict[str, str] = field(default_factory=dict)
    nodes: int = 0
    components: list[str] = field(default_factory=list)
    # The network namespace it runs in: its 127.0.0.1 and pod addresses exist only there.
    netns: str = ""
    # Where the data plane answers: gateway (Traefik's entry point), prometheus, kubelet_dir.
    endpoints: dict[str, str] = field(default_factory=dict)
    # Each control-plane process's arguments, so `restart` can start it again as it was.
    commands: dict[str, list[str]] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int, binary: str | None = None) -> bool:
    """True if `pid` runs and (when given) runs `binary`: a recycled PID is not ours to kill."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if stat.split(") ", 1)[-1].startswith("Z"):  # a zombie has exited already
        return False
    return binary is None or cmdline == binary


def gpu_node_manifest(name: str, product: str, gpus: int) -> dict[str, Any]:
    node = cpu_node_manifest(name)
    node["metadata"]["labels"].update(
        {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.count": str(gpus),
        }
    )
    node["spec"]["taints"] = [GPU_TAINT]
    for resources in ("capacity", "allocatable"):
        node["status"][resources]["nvidia.com/gpu"] = str(gpus)
    return node


def cpu_node_manifest(name: str) -> dict[str, Any]:
    """A node without GPUs, where system workloads such as the operator itself run."""
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # kwok manages only nodes carrying this annotation.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "type": "kwok",
            },
        },
        "spec": {},
        # The apiserver keeps status on create; kwok's node-initialize stage keeps allocatable.
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "containerRuntimeVersion": "",
                "kernelVersion": "",
                "osImage": "",
                "machineID": "",
                "bootID": "",
                "systemUUID": "",
            },
            "phase": "Running",
        },
    }


def node_names(count: int) -> Iterator[tuple[str, str]]:
    """Names and GPU products for `count` nodes, alternating halves between the two GPU types."""
    per_type: dict[str, int] = {}
    for index in range(count):
        product = GPU_PRODUCTS[0] if index < (count + 1) // 2 else GPU_PRODUCTS[1]
        number = per_type.get(product, 0)
        per_type[product] = number + 1
        yield f"gpu-{GPU_SHORT_NAMES[product]}-{number}", product


class ApiClient:
    """Just enough of the Kubernetes REST API to bootstrap and probe the cluster (stdlib only)."""

    def __init__(self, url: str, token: str, ca_file: str | None = None) -> None:
        self.url = url
        self.token = token
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.context)
        )
        with opener.open(request, timeout=timeout) as response:
            payload = response.read()
        return json.loads(payload) if payload and payload[:1] in b"{[" else payload.decode()

    def ok(self, path: str) -> bool:
        try:
            self.request("GET", path, timeout=3)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return True


class LocalCluster:
    def __init__(
        self,
        state_dir: Path = DEFAULT_STATE_DIR,
        bin_dir: Path | None = None,
        pod_cidr: str = DEFAULT_POD_CIDR,
    ) -> None:
        self.state_dir = state_dir
        self.pod_cidr = pod_cidr
        self.state_file = state_dir / "state.json"
        self._bin_dir = bin_dir
        # Processes started by this object: while `up` waits, ask them directly. Right after fork,
        # /proc/<pid>/cmdline still shows python until exec, so the binary check would misfire.
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- state ----------------------------------------------------------------------------------
    def load_state(self) -> ClusterState | None:
        try:
            return ClusterState(**json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return None

    def reachable(self) -> ClusterState | None:
        """The recorded cluster, if it runs and in this network namespace (so its 127.0.0.1 and pod
        addresses are this process's too)."""
        state = self.running()
        return state if state is not None and state.netns == current_netns() else None

    def running(self) -> ClusterState | None:
        """The recorded cluster, if every one of its processes still runs."""
        state = self.load_state()
        if state is None or not state.pids:
            return None
        if all(pid_alive(pid, state.binaries.get(name)) for name, pid in state.pids.items()):
            return state
        return None

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            out = subprocess.run(
                ["bash", str(REPO_ROOT / "hack" / "build-tools.sh")],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            self._bin_dir = Path(out.stdout.strip().splitlines()[-1])
        return self._bin_dir

    # -- up -------------------------------------------------------------------------------------
    def up(
        self,
        nodes: int = 4,
        gpus_per_node: int = 8,
        timeout: float = 180,
        components: tuple[str, ...] = (),
        max_processes: int = 0,
    ) -> ClusterState:
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ClusterError(
                f"unknown components {sorted(unknown)}; known: {', '.join(COMPONENTS)}"
            )
        if "metrics" in components and "prometheus" not in components:
            raise ClusterError(
                "metrics (prometheus-adapter) needs prometheus: --with prometheus,metrics"
            )
        require_isolated_network("the local cluster")
        existing = self.running()
        if existing is not None:
            raise ClusterError(
                f"a cluster is already running (kubeconfig {existing.kubeconfig}); "
                "run `hack/cluster.sh down` first"
            )
        if self.load_state() is not None:
            log("found a stale state file from a cluster that is no longer running: cleaning it up")
            self.down()
        bins = self.bin_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data_dir = Path(tempfile.mkdtemp(prefix="modelplane-cluster-"))
        ports = {
            n: free_port() for n in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")
        }
        token = os.urandom(16).hex()
        url = f"https://127.0.0.1:{ports['apiserver']}"
        state = ClusterState(
            data_dir=str(data_dir),
            kubeconfig=str(self.state_dir / "kubeconfig"),
            apiserver_url=url,
            token=token,
            components=[c for c in COMPONENTS if c in components],
            netns=current_netns(),
        )
        started = time.monotonic()
        try:
            self._write_credentials(data_dir, token, url, Path(state.kubeconfig))
            (data_dir / "audit-policy.yaml").write_text(AUDIT_POLICY)
            self._start(state, "etcd", bins / "etcd", self._etcd_args(data_dir, ports))
            self._wait(
                lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"), "etcd", timeout
            )
            self._start(
                state,
                "kube-apiserver",
                bins / "kube-apiserver",
                self._apiserver_args(data_dir, ports),
            )
            api = ApiClient(url, token, str(data_dir / "pki" / "ca.crt"))
            self._wait(lambda: api.ok("/readyz"), "kube-apiserver", timeout, state)
            self._start(
                state,
                "kube-controller-manager",
                bins / "kube-controller-manager",
                self._kcm_args(data_dir, ports, state.kubeconfig),
            )
            self._start(
                state,
                "kube-scheduler",
                bins / "kube-scheduler",
                [
                    f"--kubeconfig={state.kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={ports['scheduler']}",
                    "--leader-elect=false",
                    "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                    "--v=1",
                ],
            )
            self._start(
                state,
                "kwok",
                bins / "kwok",
                [
                    f"--kubeconfig={state.kubeconfig}",
                    f"--config={self._kwok_config(data_dir, bins, 'kubelet' in components)}",
                    f"--server-address=127.0.0.1:{ports['kwok']}",
                ],
            )
            self._save(state)
            self.add_nodes(api, nodes, gpus_per_node)
            state.nodes = nodes
            self._save(state)
            self._wait(
                lambda: self._all_nodes_ready(api, nodes + 1),
                f"{nodes} GPU nodes and 1 CPU node Ready",
                timeout,
                state,
            )
            self._wait(
                lambda: self._default_service_account(api),
                "the default ServiceAccount",
                timeout,
                state,
            )
            if state.components:
                self._start_dataplane(state, api, timeout, max_processes)
        except BaseException:
            self._save(state)
            self.down(quiet=True)
            raise
        log(
            f"control plane up in {time.monotonic() - started:.1f}s; "
            f"export KUBECONFIG={state.kubeconfig}"
        )
        return state

    # -- the data plane ---------------------------------------------------------------------------
    def _start_dataplane(
        self, state: ClusterState, api: ApiClient, timeout: float, max_processes: int
    ) -> None:
        if not (VENV_BIN / "python").exists():
            raise ClusterError(
                f"the data plane runs from the project's venv: run hack/setup.sh ({VENV_BIN})"
            )
        data_dir = Path(state.data_dir)
        kubeconfig = Path(state.kubeconfig)
        pki = data_dir / "pki"
        wanted = set(state.components)
        bins = self._dataplane_bin_dir() if wanted - {"kubelet"} else None
        if "kubelet" in wanted:
            kubelet_dir = data_dir / "kubelet"
            self._start_command(
                state,
                services.kubelet_command(
                    VENV_BIN / "python", kubeconfig, kubelet_dir, max_processes
                ),
            )
            state.endpoints["kubelet_dir"] = str(kubelet_dir)
        if "prometheus" in wanted and bins is not None:
            port = free_port()
            config = data_dir / "prometheus.yml"
            rules = data_dir / "prometheus-rules"
            rules.mkdir(exist_ok=True)
            config.write_text(services.to_json(services.prometheus_config(kubeconfig, rules)))
            self._start_command(
                state,
                services.prometheus_command(
                    bins / "prometheus", config, data_dir / "prometheus", port
                ),
            )
            url = f"http://127.0.0.1:{port}"
            self._wait(lambda: _http_ok(f"{url}/-/ready"), "Prometheus ready", timeout, state)
            state.endpoints["prometheus"] = url
            state.endpoints["prometheus_rules"] = str(rules)
        if "metrics" in wanted and bins is not None:
            port = free_port()
            config = data_dir / "adapter.yml"
            config.write_text(services.to_json(services.adapter_config()))
            self._start_command(
                state,
                services.adapter_command(
                    bins / "prometheus-adapter",
                    kubeconfig,
                    config,
                    pki,
                    port,
                    int(state.endpoints["prometheus"].rsplit(":", 1)[1]),
                ),
            )
            ca_bundle = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
            self._kubectl_apply(state, services.adapter_objects(port, ca_bundle))
            self._wait(
                lambda: api.ok("/apis/custom.metrics.k8s.io/v1beta1"),
                f"the custom metrics API ({services.CUSTOM_METRICS_API}) Available",
                timeout,
                state,
            )
        if "gateway" in wanted and bins is not None:
            self._kubectl(
                state, "apply", "--server-side", "-f", str(bins / "gateway-api-crds.yaml")
            )
            for crd in ("gateways", "httproutes"):
                self._wait(
                    lambda crd=crd: self._established(api, f"{crd}.gateway.networking.k8s.io"),
                    f"crd/{crd}.gateway.networking.k8s.io Established",
                    60,
                    state,
                )
            port, ping_port = free_port(NAMESPACE_ADDRESS), free_port(NAMESPACE_ADDRESS)
            self._start_command(
                state, services.traefik_command(bins / "traefik", kubeconfig, port, ping_port)
            )
            self._wait(
                lambda: _http_ok(f"http://{NAMESPACE_ADDRESS}:{ping_port}/ping"),
                "Traefik /ping",
                timeout,
                state,
            )
            self._kubectl_apply(state, services.gateway_objects(port))
            path = (
                f"/apis/gateway.networking.k8s.io/v1/namespaces/{services.GATEWAY_NAMESPACE}"
                f"/gateways/{services.GATEWAY_NAME}"
            )
            self._wait(
                lambda: _condition(api, path, "Programmed"),
                "the Gateway Programmed",
                timeout,
                state,
            )
            state.endpoints["gateway"] = f"http://{NAMESPACE_ADDRESS}:{port}"
        self._save(state)

    def _dataplane_bin_dir(self) -> Path:
        out = subprocess.run(
            ["bash", str(REPO_ROOT / "hack" / "build-tools.sh"), "dataplane"],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        return Path(out.stdout.strip().splitlines()[-1])

    def _start_command(self, state: ClusterState, command: services.Command) -> None:
        require_isolated_network(command.name)
        self._start(state, command.name, Path(command.argv[0]), command.argv[1:], command.env)

    def _kubectl(self, state: ClusterState, *args: str, stdin: str | None = None) -> None:
        result = subprocess.run(
            [str(VENV_BIN / "kubectl"), f"--kubeconfig={state.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")

    def _kubectl_apply(self, state: ClusterState, objects: list[dict[str, Any]]) -> None:
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        self._kubectl(state, "apply", "--server-side", "-f", "-", stdin=document)

    def add_nodes(self, api: ApiClient, nodes: int, gpus_per_node: int) -> None:
        manifests = [
            gpu_node_manifest(n, product, gpus_per_node) for n, product in node_names(nodes)
        ]
        manifests.append(cpu_node_manifest("cpu-0"))
        for manifest in manifests:
            try:
                api.request("POST", "/api/v1/nodes", manifest)
            except urllib.error.HTTPError as error:
                if error.code != 409:  # already there
                    raise

    @staticmethod
    def _all_nodes_ready(api: ApiClient, count: int) -> bool:
        items = api.request("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")["items"]
        ready = [
            node
            for node in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node["status"].get("conditions", [])
            )
            # the not-ready taint goes once the node lifecycle controller sees the node Ready
            and not any(
                t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", [])
            )
        ]
        return len(ready) >= count

    @staticmethod
    def _established(api: ApiClient, crd: str) -> bool:
        """Whether a CRD is Established (polled: `kubectl wait` fails at once while a fresh CRD
        has no status.conditions yet)."""
        try:
            found = api.request(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
            )
        except (urllib.error.URLError, OSError):
            return False
        conditions = found.get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    @staticmethod
    def _default_service_account(api: ApiClient) -> bool:
        try:
            api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default", timeout=3)
        except (urllib.error.URLError, OSError):
            return False
        return True

    def _write_credentials(self, data_dir: Path, token: str, url: str, kubeconfig: Path) -> None:
        pki = data_dir / "pki"
        pki.mkdir()

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        # A CA and a serving certificate for 127.0.0.1, so clients verify TLS for real.
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            str(pki / "ca.key"),
            "-out",
            str(pki / "ca.crt"),
            "-subj",
            "/CN=modelplane-local-ca",
        )
        signed_by_ca(
            pki,
            "apiserver",
            "kube-apiserver",
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            f"DNS:kubernetes.default.svc,IP:{KUBERNETES_SERVICE_IP}\n",
        )
        openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
        # The aggregation layer: the apiserver's front-proxy client certificate (what an extension
        # apiserver such as prometheus-adapter trusts), and the adapter's serving certificate for
        # the name the apiserver verifies it against.
        signed_by_ca(pki, "front-proxy-client", "front-proxy-client", "")
        signed_by_ca(
            pki,
            "adapter",
            "prometheus-adapter",
            f"subjectAltName=DNS:{services.adapter_server_name()},IP:127.0.0.1\n",
        )
        # Static token auth: one admin in system:masters (RBAC stays on for everyone else).
        (pki / "tokens.csv").write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        ca_data = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "modelplane-local",
                    "cluster": {"server": url, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "modelplane-local",
                    "context": {"cluster": "modelplane-local", "user": ADMIN_USER},
                }
            ],
            "current-context": "modelplane-local",
        }
        kubeconfig.write_text(json.dumps(config, indent=2) + "\n")
        kubeconfig.chmod(0o600)

    @staticmethod
    def _etcd_args(data_dir: Path, ports: dict[str, int]) -> list[str]:
        client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
        return [
            "--name=node0",
            f"--data-dir={data_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=node0={peer}",
            "--listen-metrics-urls=",
            # A throwaway test store: durability costs fsyncs and buys nothing here.
            "--unsafe-no-fsync=true",
            "--auto-compaction-retention=1",
            "--quota-backend-bytes=8589934592",
            "--log-level=warn",
        ]

    @staticmethod
    def _apiserver_args(data_dir: Path, ports: dict[str, int]) -> list[str]:
        pki = data_dir / "pki"
        return [
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.key'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The aggregation layer (custom.metrics.k8s.io from prometheus-adapter).
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--allow-privileged=true",
            # No kubelet/pod network: don't publish 127.0.0.1 as the `kubernetes` Service endpoint.
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            # Every write, who made it and when (tests prove from it who reconciled when).
            f"--audit-policy-file={data_dir / 'audit-policy.yaml'}",
            f"--audit-log-path={data_dir / 'audit.log'}",
            "--audit-log-format=json",
            "--audit-log-maxsize=200",
            "--audit-log-maxbackup=1",
            "--v=1",
        ]

    @staticmethod
    def _kcm_args(data_dir: Path, ports: dict[str, int], kubeconfig: str) -> list[str]:
        pki = data_dir / "pki"
        return [
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['kcm']}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            "--leader-elect=false",
            f"--controllers={KCM_CONTROLLERS}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
            # Tests watch HPAs and node lifecycles; react in seconds, not the production minute.
            "--horizontal-pod-autoscaler-sync-period=5s",
            "--node-monitor-period=2s",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--v=1",
        ]

    def _kwok_config(self, data_dir: Path, bins: Path, local_kubelet: bool) -> Path:
        config = data_dir / "kwok.yaml"
        header = (
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\n"
            "kind: KwokConfiguration\n"
            "options:\n"
            "  manageAllNodes: false\n"
            "  manageNodesWithAnnotationSelector: kwok.x-k8s.io/node=fake\n"
            # Pod and node addresses inside the namespace (see the module docstring).
            f"  cidr: {self.pod_cidr}\n"
            f"  nodeIP: {NAMESPACE_ADDRESS}\n"
            "  nodeLeaseDurationSeconds: 40\n"
            # kwok's documented defaults, spelled out: with a config file it leaves them at 0.
            "  nodeLeaseParallelism: 8\n"
            "  nodePlayStageParallelism: 8\n"
            "  podPlayStageParallelism: 8\n"
            "  podsOnNodeSyncParallelism: 2\n"
        )
        stages = (bins / "kwok-stages.yaml").read_text().rstrip("\n") + POD_READY_AGAIN_STAGE
        if local_kubelet:
            stages = with_local_kubelet(stages)
        config.write_text(header + stages)
        return config

    def _start(
        self,
        state: ClusterState,
        name: str,
        binary: Path,
        args: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        logfile = Path(state.data_dir) / f"{name}.log"
        with logfile.open("ab") as out:
            process = subprocess.Popen(
                [str(binary), *args],
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        state.pids[name] = process.pid
        self._children[name] = process
        state.binaries[name] = str(binary)
        state.commands[name] = list(args)
        self._save(state)

    # -- chaos ------------------------------------------------------------------------------------
    def stop(self, name: str) -> None:
        """Kill one control-plane process (SIGKILL: a crash, not a shutdown) and reap it."""
        state = self._require_state()
        pid = state.pids[name]
        if pid_alive(pid, state.binaries.get(name)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child = self._children.pop(name, None)
        if child is not None:
            child.wait(timeout=10)
        deadline = time.monotonic() + 10
        while pid_alive(pid, state.binaries.get(name)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def start(self, name: str, timeout: float = 60) -> None:
        """Start a stopped control-plane process again with its own arguments (same ports, same
        data), and wait until it serves."""
        state = self._require_state()
        self._start(state, name, Path(state.binaries[name]), state.commands[name])
        if name == "kube-apiserver":
            api = ApiClient(state.apiserver_url, state.token, _ca_file(state))
            self._wait(lambda: api.ok("/readyz"), "kube-apiserver", timeout, state)
        elif name == "etcd":
            client = next(a for a in state.commands[name] if a.startswith("--listen-client-urls="))
            url = client.split("=", 1)[1]
            self._wait(lambda: _http_ok(f"{url}/health"), "etcd", timeout, state)

    def _require_state(self) -> ClusterState:
        state = self.load_state()
        if state is None:
            raise ClusterError(f"no cluster recorded in {self.state_dir}")
        return state

    def _wait(
        self, predicate: Any, what: str, timeout: float, state: ClusterState | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if state is not None:
                dead = [n for n, child in self._children.items() if child.poll() is not None]
                if dead:
                    raise ClusterError(
                        f"{', '.join(dead)} exited while waiting for {what}: "
                        f"{self._tail(state, dead[0])}"
                    )
            time.sleep(0.25)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")

    @staticmethod
    def _tail(state: ClusterState, name: str, lines: int = 15) -> str:
        try:
            return "\n" + "\n".join(
                (Path(state.data_dir) / f"{name}.log").read_text().splitlines()[-lines:]
            )
        except FileNotFoundError:
            return "(no log)"

    def _save(self, state: ClusterState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        tmp.replace(self.state_file)

    # -- down -----------------------------------------------------------------------------------
    def down(self, quiet: bool = False) -> bool:
        state = self.load_state()
        if state is None:
            if not quiet:
                log("no cluster recorded in " + str(self.state_dir))
            return False
        # Reverse start order: kwok and the controllers first, etcd last.
        for name in reversed(list(state.pids)):
            pid = state.pids[name]
            if pid_alive(pid, state.binaries.get(name)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, pid in state.pids.items():
            while pid_alive(pid, state.binaries.get(name)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid, state.binaries.get(name)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # Reap the processes this object started, so none lingers as a zombie (or trips Python's
        # "subprocess is still running" ResourceWarning when the handle is collected).
        for child in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        self._children.clear()
        shutil.rmtree(state.data_dir, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        Path(state.kubeconfig).unlink(missing_ok=True)
        if not quiet:
            log(f"stopped {len(state.pids)} processes and removed {state.data_dir}")
        return True

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        state = self.load_state()
        if state is None:
            return {"running": False}
        processes = {}
        for name, pid in state.pids.items():
            alive = pid_alive(pid, state.binaries.get(name))
            rss_kib = 0
            if alive:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss_kib = int(line.split()[1])
            processes[name] = {"pid": pid, "alive": alive, "rss_mib": round(rss_kib / 1024, 1)}
        return {
            "running": all(p["alive"] for p in processes.values()),
            "kubeconfig": state.kubeconfig,
            "apiserver": state.apiserver_url,
            "nodes": state.nodes,
            "processes": processes,
            "total_rss_mib": round(sum(p["rss_mib"] for p in processes.values()), 1),
            "data_dir": state.data_dir,
            "components": state.components,
            "endpoints": state.endpoints,
        }


def current_netns() -> str:
    """This process's network namespace, e.g. `net:[4026532871]`."""
    return str(Path("/proc/self/ns/net").readlink())


def signed_by_ca(pki: Path, name: str, common_name: str, extensions: str) -> None:
    """A key and a certificate `<name>.{key,crt}` signed by the cluster's CA."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    key, csr, crt = (str(pki / f"{name}.{suffix}") for suffix in ("key", "csr", "crt"))
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        f"/CN={common_name}",
    )
    sign = [
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        str(pki / "ca.crt"),
        "-CAkey",
        str(pki / "ca.key"),
        "-CAcreateserial",
        "-days",
        "30",
        "-out",
        crt,
    ]
    if extensions:
        (pki / f"{name}.ext").write_text(extensions)
        sign += ["-extfile", str(pki / f"{name}.ext")]
    openssl(*sign)


def _condition(api: ApiClient, path: str, kind: str) -> bool:
    try:
        obj = api.request("GET", path, timeout=3)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in obj.get("status", {}).get("conditions", [])
    )


# Never through a proxy from the environment: every address here is local to the namespace.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_ok(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def parse_components(text: str) -> tuple[str, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    return COMPONENTS if names == ["dataplane"] else tuple(names)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 (one return per subcommand outcome)
    parser = argparse.ArgumentParser(prog="hack/cluster.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("MODELPLANE_CLUSTER_DIR", DEFAULT_STATE_DIR)),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up", help="build (cached) and start the control plane with simulated GPU nodes"
    )
    up.add_argument(
        "--nodes", type=int, default=int(os.environ.get("MODELPLANE_CLUSTER_NODES", "4"))
    )
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument(
        "--with",
        dest="components",
        default=os.environ.get("MODELPLANE_CLUSTER_WITH", ""),
        help="the data plane, comma-separated: kubelet, prometheus, metrics, gateway; or "
        "`dataplane` for all four (default: none, the control plane alone)",
    )
    up.add_argument(
        "--max-processes", type=int, default=0, help="local kubelet: most server processes at once"
    )
    sub.add_parser("down", help="stop the processes `up` started and remove its data")
    sub.add_parser("status", help="print whether the cluster runs, its processes and their memory")
    sub.add_parser("env", help="print `export KUBECONFIG=...` for eval")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.state_dir)

    if args.command == "up":
        existing = cluster.running()
        if existing is not None:
            log(
                "a cluster is already running; not starting another. "
                f"export KUBECONFIG={existing.kubeconfig}"
            )
            return 0
        try:
            state = cluster.up(
                nodes=args.nodes,
                gpus_per_node=args.gpus_per_node,
                components=parse_components(args.components),
                max_processes=args.max_processes,
            )
        except (ClusterError, NotIsolatedError, subprocess.CalledProcessError) as error:
            log(f"error: {error}")
            return 1
        print(f"export KUBECONFIG={state.kubeconfig}")
        return 0
    if args.command == "down":
        cluster.down()
        return 0
    if args.command == "status":
        status = cluster.status()
        print(json.dumps(status, indent=2))
        return 0 if status["running"] else 3
    current = cluster.running()
    if current is None:
        log("no cluster is running: start one with `hack/cluster.sh up`")
        return 3
    print(f"export KUBECONFIG={current.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The data plane's services, as command lines and configuration: pure functions, no I/O.

`localcluster.py` starts them (after `isolation.require_isolated_network`) in this order: the
local kubelet, Prometheus, prometheus-adapter (registered as `v1beta1.custom.metrics.k8s.io`),
Traefik (the Gateway). Standard library only, like `localcluster.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataplane.isolation import NAMESPACE_ADDRESS

SYSTEM_NAMESPACE = "modelplane-system"
GATEWAY_NAMESPACE = "modelplane-gateway"
GATEWAY_CLASS = "modelplane-local"
GATEWAY_NAME = "modelplane"
ADAPTER_SERVICE = "prometheus-adapter"
CUSTOM_METRICS_API = "v1beta1.custom.metrics.k8s.io"
SCRAPE_INTERVAL = "2s"

# The server's gauges the HPA may scale on, served as Pods metrics under their own names.
ADAPTER_METRICS = (
    "modelplane_queue_depth",
    "modelplane_num_requests_running",
    "modelplane_batch_fill",
    "modelplane_kv_cache_usage",
)


@dataclass(frozen=True)
class Command:
    name: str
    argv: list[str]
    env: dict[str, str]


def prometheus_config(kubeconfig: Path, rules: Path) -> dict[str, Any]:
    """Scrape every pod of a ModelDeployment on its `http` port, labelled as the ServiceMonitor the
    operator renders promises: namespace, pod, modeldeployment, variant (`stable` unless the pod's
    `modelplane.io/variant` label says otherwise). Rule files are read from `rules` (what the
    Prometheus Operator would load from PrometheusRules; tests put them there and reload)."""
    label = "__meta_kubernetes_pod_label_"
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules / "*.yaml")],
        "scrape_configs": [
            {
                "job_name": "modelplane-servers",
                "metrics_path": "/metrics",
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
                "relabel_configs": [
                    {
                        "source_labels": [f"{label}app_kubernetes_io_managed_by"],
                        "regex": "modelplane-operator",
                        "action": "keep",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                        "regex": "http",
                        "action": "keep",
                    },
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    # The operator's ServiceMonitor relabelings (render.METRIC_RELABELINGS).
                    {
                        "source_labels": [f"{label}app_kubernetes_io_instance"],
                        "target_label": "modeldeployment",
                    },
                    {
                        "source_labels": [f"{label}modelplane_io_variant"],
                        "regex": "(.+)",
                        "target_label": "variant",
                    },
                    {
                        "source_labels": [f"{label}modelplane_io_variant"],
                        "regex": "",
                        "target_label": "variant",
                        "replacement": "stable",
                    },
                ],
            }
        ],
    }


def adapter_config() -> dict[str, Any]:
    """prometheus-adapter rules: each gauge in ADAPTER_METRICS as a Pods metric of the same name."""
    return {
        "rules": [
            {
                "seriesQuery": f'{metric}{{namespace!="",pod!=""}}',
                "resources": {
                    "overrides": {
                        "namespace": {"resource": "namespace"},
                        "pod": {"resource": "pod"},
                    }
                },
                "name": {"matches": f"^{metric}$", "as": metric},
                "metricsQuery": "max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
            }
            for metric in ADAPTER_METRICS
        ]
    }


def adapter_objects(port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """The APIService and the ExternalName Service through which the apiserver reaches the adapter
    on 127.0.0.1 (no `--enable-aggregator-routing`: that resolves through EndpointSlices)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": ADAPTER_SERVICE, "namespace": SYSTEM_NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": CUSTOM_METRICS_API},
            "spec": {
                "group": "custom.metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": ADAPTER_SERVICE, "namespace": SYSTEM_NAMESPACE, "port": port},
                "caBundle": ca_bundle,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def adapter_server_name() -> str:
    """The name the apiserver verifies the adapter's certificate against."""
    return f"{ADAPTER_SERVICE}.{SYSTEM_NAMESPACE}.svc"


def gateway_objects(port: int) -> list[dict[str, Any]]:
    """Traefik's GatewayClass and a Gateway whose listener takes HTTPRoutes from every namespace."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": "traefik.io/gateway-controller"},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {
                        "name": "web",
                        "protocol": "HTTP",
                        # A listener's port must equal one of Traefik's entry points.
                        "port": port,
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    }
                ],
            },
        },
    ]


def traefik_command(binary: Path, kubeconfig: Path, port: int, ping_port: int) -> Command:
    return Command(
        name="traefik",
        argv=[
            str(binary),
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            f"--entryPoints.web.address={NAMESPACE_ADDRESS}:{port}",
            f"--entryPoints.traefik.address={NAMESPACE_ADDRESS}:{ping_port}",
            "--providers.kubernetesGateway=true",
            # What fills Gateway.status.addresses: clients read the address from there.
            f"--providers.kubernetesGateway.statusAddress.ip={NAMESPACE_ADDRESS}",
            "--ping=true",
            "--log.level=INFO",
        ],
        env={"KUBECONFIG": str(kubeconfig)},
    )


def prometheus_command(binary: Path, config: Path, data: Path, port: int) -> Command:
    return Command(
        name="prometheus",
        argv=[
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=6h",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",  # POST /-/reload picks up new rule files
            "--log.level=warn",
        ],
        env={},
    )


def adapter_command(  # noqa: PLR0917 (each path and port is named at the one call site)
    binary: Path, kubeconfig: Path, config: Path, pki: Path, port: int, prometheus_port: int
) -> Command:
    return Command(
        name="prometheus-adapter",
        argv=[
            str(binary),
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={pki / 'adapter.crt'}",
            f"--tls-private-key-file={pki / 'adapter.key'}",
            f"--prometheus-url=http://127.0.0.1:{prometheus_port}/",
            f"--config={config}",
            "--metrics-relist-interval=5s",
            "--v=1",
        ],
        env={},
    )


def kubelet_command(python: Path, kubeconfig: Path, state_dir: Path, max_processes: int) -> Command:
    return Command(
        name="local-kubelet",
        argv=[
            str(python),
            "-m",
            "dataplane",
            "kubelet",
            f"--kubeconfig={kubeconfig}",
            f"--state-dir={state_dir}",
            f"--max-processes={max_processes}",
        ],
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def to_json(obj: Any) -> str:
    """Configuration files are written as JSON, which Prometheus and the adapter read as YAML."""
    return json.dumps(obj, indent=2) + "\n"

"""Monitoring: the ServiceMonitor for the server's /metrics and the PrometheusRule of SLO alerts."""

from __future__ import annotations

from typing import Any

from modelplane_operator import server_contract, slo_rules
from modelplane_operator.kinds import PROMETHEUS_RULE
from modelplane_operator.models import ModelDeploymentSpec
from modelplane_operator.names import VARIANT_LABEL, instance_labels
from modelplane_operator.render.objects import Manifest, Owner, RenderOptions, metadata

# Labels on every series of a server besides Prometheus-Operator's own (namespace, pod, service,
# endpoint, container): the ModelDeployment and the variant (`stable` unless the pod says so).
# The local cluster's Prometheus (hack/dataplane/services.py) relabels the same way; a test holds
# the two together.
METRIC_RELABELINGS: list[dict[str, Any]] = [
    {
        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
        "targetLabel": "modeldeployment",
    },
    {
        "sourceLabels": ["__meta_kubernetes_pod_label_modelplane_io_variant"],
        "regex": "(.+)",
        "targetLabel": "variant",
    },
    {
        "sourceLabels": ["__meta_kubernetes_pod_label_modelplane_io_variant"],
        "regex": "",
        "targetLabel": "variant",
        "replacement": "stable",
    },
]


def render_service_monitor(owner: Owner, spec: ModelDeploymentSpec) -> Manifest:
    """A Prometheus-Operator ServiceMonitor for the server's /metrics (no typed model exists)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(owner).to_dict(),
        "spec": {
            # The shared Service only: a variant's own Service selects the same pods again.
            "selector": {
                "matchLabels": instance_labels(owner.name),
                "matchExpressions": [{"key": VARIANT_LABEL, "operator": "DoesNotExist"}],
            },
            "endpoints": [
                {
                    "port": server_contract.PORT_NAME,
                    "path": server_contract.METRICS_PATH,
                    "interval": spec.monitoring.interval,
                    "relabelings": [dict(rule) for rule in METRIC_RELABELINGS],
                }
            ],
        },
    }


def render_prometheus_rule(
    owner: Owner, spec: ModelDeploymentSpec, options: RenderOptions
) -> Manifest | None:
    """The SLO alerts (spec.slo) as a Prometheus-Operator PrometheusRule; labelled so that the
    cluster's Prometheus selects it (`options.rule_labels`, the chart's prometheusRule.labels)."""
    if spec.slo is None:
        return None
    labelled = metadata(owner).to_dict()
    labelled["labels"] = {**options.rule_labels, **labelled["labels"]}
    alerts = tuple(spec.slo.burn_rate_alerts or slo_rules.WORKBOOK_ALERTS)
    groups = slo_rules.render_rule_groups(spec.slo, owner.namespace, owner.name, alerts)
    return {
        "apiVersion": PROMETHEUS_RULE.api_version,
        "kind": PROMETHEUS_RULE.kind,
        "metadata": labelled,
        "spec": {"groups": groups},
    }

"""The operator's configuration (environment variables `MODELPLANE_OPERATOR_*`) and kopf's settings.

The operator registers no kopf change handlers, so kopf keeps no bookkeeping on the objects; the
storages are still pointed at annotations under our API group (never `status`, which belongs to
the ModelDeployment API) so that nothing kopf might write lands under `kopf.zalando.org`.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any, Literal

import kopf
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelplane_operator.models import GROUP


class OperatorSettings(BaseSettings):
    """Knobs for one operator process."""

    model_config = SettingsConfigDict(env_prefix="MODELPLANE_OPERATOR_", frozen=True)

    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (or globs such as team-*) to watch; empty: the whole cluster.",
    )
    resync_seconds: float = Field(
        default=60.0, gt=0, description="How often every ModelDeployment is re-reconciled (drift)."
    )
    retry_delay_seconds: float = Field(
        default=5.0, gt=0, description="Delay before retrying after an API error."
    )
    conflict_retries: int = Field(default=3, ge=0, description="Quick retries of a 409 Conflict.")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="/metrics port; 0 = off.")
    health_port: int = Field(default=8081, ge=0, le=65535, description="/healthz port; 0 = off.")
    workers: int = Field(
        default=16, ge=1, description="ModelDeployments reconciled at once (requests in flight)."
    )
    debounce_seconds: float = Field(
        default=0.5,
        ge=0,
        description="How long a trigger waits before its reconcile, so a burst becomes one.",
    )
    crd_refresh_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long the presence of an optional CRD (ServiceMonitor) is remembered.",
    )
    watch_backoff_seconds: float = Field(
        default=1.0, gt=0, description="Pause before kopf re-opens a failed watch."
    )
    prometheus_url: str | None = Field(
        default=None,
        description=(
            "The Prometheus HTTP API (e.g. http://prometheus.monitoring.svc:9090) that KEDA "
            "ScaledObjects' triggers query; without it autoscaling uses the HPA."
        ),
    )
    rule_labels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Labels on every PrometheusRule (JSON), matched by the Prometheus' ruleSelector, "
            'e.g. {"release": "kube-prometheus-stack"}.'
        ),
    )
    api_outage_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long failing API requests (watches included) are retried before "
        "kopf gives up on them.",
    )
    leader_election: bool = Field(
        default=False,
        description=(
            "Run as one of several replicas: only the holder of the Lease reconciles "
            "(the chart turns it on with replicas > 1)."
        ),
    )
    lease_name: str = Field(default="modelplane-operator", description="The Lease's name.")
    lease_namespace: str = Field(
        default_factory=lambda: os.environ.get("POD_NAMESPACE", "default"),
        description="The Lease's namespace (the operator's own, from POD_NAMESPACE).",
    )
    identity: str = Field(
        default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
        description="This replica's name in the Lease (the pod name and a random suffix).",
    )
    lease_seconds: float = Field(
        default=15.0, gt=0, description="How long a Lease not renewed stays its holder's."
    )
    renew_deadline_seconds: float = Field(
        default=10.0,
        gt=0,
        description="The leader stops reconciling when it could not renew for this long.",
    )
    lease_retry_seconds: float = Field(
        default=2.0, gt=0, description="How often candidates try and the leader renews."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the operator (`run --verbose` means debug)."
    )

    @model_validator(mode="after")
    def _lease_timing(self) -> OperatorSettings:
        # client-go's rule: the leader gives up before anyone may take over, and tries more than
        # once before it gives up.
        if not self.lease_retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "lease timing needs lease_retry_seconds < renew_deadline_seconds < lease_seconds"
            )
        return self


MAX_BACKOFF_SECONDS = 10.0


def api_backoffs(first: float, total: float) -> list[float]:
    """kopf's retry pauses for a failed API request: doubling from `first` up to 10 s, until they
    add up to `total`. kopf gives up a watch for good once they run out (except on 429), and an
    apiserver that just restarted refuses watches with 403 until its RBAC caches are filled (a
    few seconds), so they must outlast an outage, not a blip."""
    pauses: list[float] = []
    pause = first
    while sum(pauses) < total:
        pauses.append(pause)
        pause = min(pause * 2, MAX_BACKOFF_SECONDS)
    return pauses


def kopf_settings(ours: OperatorSettings) -> Any:
    """kopf's OperatorSettings for this operator."""
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Only problems become Kubernetes Events; successes are logs, not API writes.
    settings.posting.level = logging.WARNING
    settings.networking.error_backoffs = api_backoffs(
        ours.watch_backoff_seconds, ours.api_outage_seconds
    )
    settings.watching.reconnect_backoff = ours.watch_backoff_seconds
    return settings

"""The ModelDeployment API: pydantic models that are the single source of truth for the CRD.

`crd.py` turns these models into the CustomResourceDefinition (structural OpenAPI schema, CEL rules,
printer columns); the reconciler parses every custom resource with them. Field descriptions are the
API reference (`kubectl explain modeldeployment.spec.<field>`), so they are written for users.

Cross-field rules live twice on purpose: as CEL (`x-kubernetes-validations`, enforced by the
apiserver, with messages naming the field) and as pydantic validators (so `modelplane-operator
render` and the reconciler refuse the same objects the apiserver refuses). Tests feed both the same
invalid objects. Defaults are never written back into the user's spec by the operator: what the
apiserver does not default is resolved into `status.resolved`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from modelplane_operator.object_names import (
    ConfigKey,
    LabelValue,
    NamespaceName,
    ObjectName,
    QualifiedName,
    keys_rule,
)
from modelplane_operator.server_contract import (
    DEFAULT_DRAIN_TIMEOUT_SECONDS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_PREFILL_TOKENS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_PREFIX_CACHE_TOKENS,
    E2E_BUCKETS,
    OWNED_FLAGS,
    TTFT_BUCKETS,
    flag_spellings,
)

GROUP = "modelplane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md",)
CATEGORIES = ("modelplane",)

# One regular expression per model-URI scheme; the CEL rule and the pydantic validator share it.
MODEL_URI_PATTERN = r"^(hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[-A-Za-z0-9_.]+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?|file:///[^\s]*|/[^\s]*)$"
QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"  # noqa: E501
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 63
# The key of the Secret that holds the server's API key file when spec.server.apiKeys names none.
DEFAULT_API_KEYS_KEY = "api-keys"


# Messages of the cross-field rules: the CEL rule and the pydantic validator say the same thing.
MODEL_URI_MESSAGE = (
    "spec.model.uri must be hf://<org>/<repo>, pvc://<claim>[/<path>], file:///<path> or an "
    "absolute path inside the image"
)
GGUF_FORMAT_MESSAGE = "spec.model.ggufFile needs spec.model.format GGUF or Auto"
GPU_TYPE_MESSAGE = "spec.accelerator.type needs spec.accelerator.count > 0"
MIN_MAX_MESSAGE = (
    "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas"
)
TARGET_MESSAGE = (
    "spec.autoscaling needs a target: targetQueueDepth, targetBatchFillPercent, "
    "targetKVCacheUsagePercent, targetCPUUtilizationPercent or targetMemoryUtilizationPercent"
)
KEDA_CPU_MESSAGE = (
    "spec.autoscaling.targetCPUUtilizationPercent and targetMemoryUtilizationPercent need "
    "actuator HPA or Auto: KEDA's fallback, which keeps the replicas when Prometheus cannot "
    "answer, does not work with CPU or memory triggers"
)
SLO_OBJECTIVE_MESSAGE = (
    "spec.slo needs an objective: availability, timeToFirstToken or endToEndLatency"
)
ROLLOUT_MESSAGE = "spec.rollout.maxSurge and spec.rollout.maxUnavailable cannot both be 0"
REPLICAS_AUTOSCALING_MESSAGE = (
    "spec.replicas and spec.autoscaling cannot both be set: the autoscaler owns the replica count "
    "(use kubectl scale only without autoscaling)"
)


def _owned_flag_message(flag: str) -> str:
    return (
        f"spec.server.extraArgs cannot set {flag}, which the operator renders: {OWNED_FLAGS[flag]}"
    )


def cel_rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules for `json_schema_extra`: (rule, message) pairs."""
    return {
        "x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]
    }


def section(model: type[BaseModel], description: str) -> Any:
    """An optional section of the spec: defaulted in pydantic and, spelt out, in the CRD."""
    return Field(
        default_factory=model,
        json_schema_extra=_section_default(model),
        description=description,
    )


def _section_default(model: type[BaseModel]) -> Callable[[dict[str, Any]], None]:
    """The CRD default of an optional section: its defaulted fields, spelt out in full.

    Not `{}`: the apiserver validates a default with the section's CEL rules *before* nested
    defaults apply, so `{}` would fail rules such as `self.maxSurge > 0`.
    """

    def add_default(schema: dict[str, Any]) -> None:
        dumped = model().model_dump(by_alias=True, exclude_none=True, mode="json")
        schema["default"] = {key: value for key, value in dumped.items() if value not in ({}, [])}

    return add_default


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


Quantity = int | str
"""A Kubernetes resource quantity ("8Gi", "500m", 4). Rendered into the schema as int-or-string."""


def quantity_field(description: str, default: str | None = None) -> Any:
    extra: dict[str, JsonValue] = {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}
    if default is None:
        return Field(default=None, description=description, json_schema_extra=extra)
    return Field(default=default, description=description, json_schema_extra=extra)


class ModelSource(ApiModel):
    """Where the weights come from and how the server should load them."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.uri.matches('" + MODEL_URI_PATTERN.replace("\\", "\\\\") + "')",
                MODEL_URI_MESSAGE,
            ),
            (
                "!has(self.ggufFile) || self.format != 'HuggingFace'",
                GGUF_FORMAT_MESSAGE,
            ),
        )
    )

    uri: str = Field(
        max_length=2048,
        description=(
            "Where the model lives. `hf://<org>/<repo>`: downloaded from the Hugging Face Hub by "
            "an init container into a pod-local volume (needs egress to the Hub at pod start; set "
            "hfTokenSecret for gated repos). `pvc://<claim>[/<path>]`: a PersistentVolumeClaim in "
            "the same namespace, mounted read-only. `file:///<path>` or `/<path>`: a path baked "
            "into the image; `/` alone selects the server's embedded default model."
        ),
    )
    revision: str | None = Field(
        default=None,
        max_length=256,
        description=(
            "Hub revision (branch, tag or commit) for hf:// models. Pin a commit in production."
        ),
    )
    format: Literal["Auto", "HuggingFace", "GGUF"] = Field(
        default="Auto",
        description=(
            "Weight format. Auto: GGUF when the URI or ggufFile ends in .gguf, else HuggingFace."
        ),
    )
    gguf_file: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^[^/\s]+\.gguf$",
        description="GGUF file name inside the model directory (passed as --gguf-file).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weight and activation dtype (passed as --dtype)."
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=256,
        description=(
            "The model id clients send in requests. Defaults to the ModelDeployment's name."
        ),
    )
    size_gi_b: float | None = Field(
        default=None,
        alias="sizeGiB",
        gt=0,
        le=4096,
        description=(
            "Approximate size of the weights in GiB. Sizes the startup probe budget; when unset "
            "the "
            "operator assumes 16 GiB (1 GiB for the embedded model) and says so in status.resolved."
        ),
    )
    hf_token_secret: ObjectName | None = Field(
        default=None,
        description="Name of a Secret in the same namespace whose key `token` is used as HF_TOKEN.",
    )
    cache_ref: ObjectName | None = Field(
        default=None,
        description=(
            "A ModelCache in this namespace holding these weights: pods mount its claim "
            "read-only and download nothing, and wait (Ready=False, ModelDownloading) while it "
            "downloads. Unset: a Ready ModelCache with the same uri, revision and ggufFile is "
            "used when there is one (status.resolved.modelCache says which)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> ModelSource:
        if not re.match(MODEL_URI_PATTERN, self.uri):
            raise ValueError(MODEL_URI_MESSAGE)
        if self.gguf_file is not None and self.format == "HuggingFace":
            raise ValueError(GGUF_FORMAT_MESSAGE)
        return self


class EnvVarSource(ApiModel):
    """A reference to a Secret or ConfigMap key."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                "spec.server.env[].valueFrom needs exactly one of secretKeyRef, configMapKeyRef",
            )
        )
    )

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")


class KeyRef(ApiModel):
    """A key in a Secret or ConfigMap of the same namespace."""

    name: ObjectName = Field(description="Name of the Secret or ConfigMap.")
    key: ConfigKey = Field(description="Key inside it.")
    optional: bool | None = Field(default=None, description="Start the pod even if it is missing.")


class EnvVar(ApiModel):
    """An environment variable for the server container."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "has(self.value) != has(self.valueFrom)",
                "spec.server.env[] needs exactly one of value, valueFrom",
            )
        )
    )

    name: str = Field(max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Name.")
    value: str | None = Field(default=None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Value from a Secret or ConfigMap."
    )


class ApiKeys(ApiModel):
    """A Secret key holding the server's API key file: one key per line, each optionally with a
    tenant and its fair share (docs/server.md, Tenants and fair sharing)."""

    secret_name: ObjectName = Field(
        description=(
            "A Secret in the same namespace. Mounted read-only into the server container; the "
            "server reads it once at start, so after changing it run `kubectl rollout restart "
            "deployment/<name>` (and `<name>-canary` while a canary runs)."
        ),
    )
    key: ConfigKey = Field(
        default=DEFAULT_API_KEYS_KEY, description="The key inside the Secret that holds the file."
    )


class ServerConfig(ApiModel):
    """The inference server's batching and lifecycle knobs (see docs/server-contract.md)."""

    max_batch_size: int = Field(
        default=DEFAULT_MAX_BATCH_SIZE,
        ge=1,
        le=4096,
        description="Most sequences in one generation step.",
    )
    max_batch_tokens: int = Field(
        default=DEFAULT_MAX_BATCH_TOKENS,
        ge=1,
        le=1_048_576,
        description="Token budget of one step (prefill + decode).",
    )
    max_prefill_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_048_576,
        description=(
            "Most prompt tokens prefilled in one generation step; longer prompts and bursts of "
            "newcomers are prefilled over several steps, so the running streams' inter-token "
            "latency stays bounded. Unset: the server's default, "
            f"{DEFAULT_MAX_PREFILL_TOKENS}."
        ),
    )
    prefix_cache_tokens: int | None = Field(
        default=None,
        ge=0,
        le=16_777_216,
        description=(
            "Automatic prefix caching: how many tokens of prompt prefixes (a shared system prompt, "
            "few-shot examples, chat history) keep their keys and values for later requests that "
            "start the same way, least recently used out first; 0 disables. Each token costs 2 x "
            "layers x KV heads x head dim x dtype bytes of accelerator memory. Unset: the "
            f"server's default, {DEFAULT_PREFIX_CACHE_TOKENS}."
        ),
    )
    max_wait_ms: int = Field(
        default=DEFAULT_MAX_WAIT_MS,
        ge=0,
        le=10_000,
        description="Longest an embedding request waits for a batch to fill.",
    )
    max_queue: int = Field(
        default=DEFAULT_MAX_QUEUE,
        ge=1,
        le=1_000_000,
        description="Most waiting requests; beyond it the server answers 429.",
    )
    drain_timeout_seconds: int = Field(
        default=DEFAULT_DRAIN_TIMEOUT_SECONDS,
        ge=0,
        le=3600,
        description=(
            "How long the server finishes in-flight work after SIGTERM. The pod's termination "
            "grace period is this plus 15 s."
        ),
    )
    startup_timeout_seconds: int | None = Field(
        default=None,
        ge=30,
        le=86_400,
        description=(
            "Overrides the startup probe budget the operator derives from the model size and GPU "
            "count."
        ),
    )
    extra_args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Extra server flags, appended after the ones the operator renders. Flags the operator "
            "renders itself (--model, --max-batch-size, ...) are refused in any spelling: set the "
            "spec field the message names instead."
        ),
        json_schema_extra=cel_rules(
            *(
                (f"self.all(a, !a.matches('{flag_spellings(flag)}'))", _owned_flag_message(flag))
                for flag in OWNED_FLAGS
            )
        ),
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="Extra environment variables."
    )
    api_keys: ApiKeys | None = Field(
        default=None,
        description=(
            "Require a Bearer API key on /v1 (health probes and /metrics stay open): the server "
            "gets the Secret's key file as --api-key-file. The canary always uses stable's keys, "
            "since it serves the same clients. Unset: no key file (MODELPLANE_API_KEY in env "
            "still sets a single key)."
        ),
    )

    @field_validator("extra_args")
    @classmethod
    def _no_owned_flags(cls, extra_args: list[str]) -> list[str]:
        for argument in extra_args:
            for flag in OWNED_FLAGS:
                if re.match(flag_spellings(flag), argument):
                    raise ValueError(_owned_flag_message(flag))
        return extra_args


class Accelerator(ApiModel):
    """GPUs and host resources per replica."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "!has(self.type) || self.count > 0",
                GPU_TYPE_MESSAGE,
            ),
        )
    )

    type: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description=(
            "GPU product as the NVIDIA GPU feature discovery labels it (node label "
            "nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3). Unset: any GPU node."
        ),
    )
    count: int = Field(
        default=1,
        ge=0,
        le=64,
        description="GPUs per replica (nvidia.com/gpu requests and limits). 0 runs on CPU.",
    )
    cpu: Quantity = quantity_field("CPU request per replica.", default="2")
    memory: Quantity = quantity_field(
        "Memory request and limit per replica (host RAM, not GPU memory).", default="16Gi"
    )

    @model_validator(mode="after")
    def _check(self) -> Accelerator:
        if self.type is not None and self.count == 0:
            raise ValueError(GPU_TYPE_MESSAGE)
        return self


SCALE_TO_ZERO_MESSAGE = (
    "spec.autoscaling.scaleToZero needs actuator KEDA: an HPA cannot scale to zero, and KEDA "
    "wakes the deployment on scaleToZero.activationQuery"
)


class ScaleToZero(ApiModel):
    """Opt-in scale to zero (KEDA only). With no replica, no server exposes a metric, so KEDA
    wakes the deployment on a query that has data with no pod running (your gateway's request
    rate for this model). Nothing in the cluster holds a request while the first replica starts:
    the Gateway answers 503 until one is Ready (KEDA's HTTP add-on can queue them instead)."""

    activation_query: str = Field(
        min_length=1,
        max_length=4096,
        description=(
            "PromQL above activationThreshold while requests arrive, with data even when no "
            'replica runs, e.g. sum(rate(traefik_service_requests_total{service=~"ns-name-.*"}'
            "[1m]))."
        ),
    )
    activation_threshold: float = Field(
        default=0, ge=0, description="Wake (and stay awake) while the query is above this."
    )
    idle_seconds: int | None = Field(
        default=None,
        ge=30,
        le=86_400,
        description=(
            "Scale to zero after this long with no activity (KEDA's cooldownPeriod). Unset: the "
            "scale-down window."
        ),
    )


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) owns the replica count."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.minReplicas <= self.maxReplicas",
                MIN_MAX_MESSAGE,
            ),
            (
                "has(self.targetQueueDepth) || has(self.targetBatchFillPercent) || "
                "has(self.targetKVCacheUsagePercent) || has(self.targetCPUUtilizationPercent) || "
                "has(self.targetMemoryUtilizationPercent)",
                TARGET_MESSAGE,
            ),
            (
                "!(self.actuator == 'KEDA' && (has(self.targetCPUUtilizationPercent) || "
                "has(self.targetMemoryUtilizationPercent)))",
                KEDA_CPU_MESSAGE,
            ),
            ("!has(self.scaleToZero) || self.actuator == 'KEDA'", SCALE_TO_ZERO_MESSAGE),
        )
    )

    actuator: Literal["Auto", "HPA", "KEDA"] = Field(
        default="Auto",
        description=(
            "What owns the replica count: an HPA (autoscaling/v2, Pods metrics through a "
            "custom-metrics adapter), a KEDA ScaledObject (Prometheus triggers; needs KEDA's CRD "
            "and the operator's Prometheus URL), or Auto: KEDA when both are there and no CPU "
            "target is set, else the HPA. status.resolved.actuator says which."
        ),
    )
    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    target_queue_depth: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=(
            "Average waiting requests per replica (the server's modelplane_queue_depth gauge, "
            "served "
            "to the HPA as a Pods metric by a custom-metrics adapter such as prometheus-adapter)."
        ),
    )
    target_batch_fill_percent: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=(
            "Average batch fill per replica, in percent: running sequences over "
            "server.maxBatchSize (the server's modelplane_batch_fill gauge, a Pods metric through "
            "a custom-metrics adapter). A full batch is saturation before latency shows it."
        ),
    )
    target_kv_cache_usage_percent: int | None = Field(
        default=None,
        alias="targetKVCacheUsagePercent",
        ge=1,
        le=100,
        description=(
            "Average KV-cache usage per replica, in percent: tokens the running sequences hold "
            "over what the cache can hold (the server's modelplane_kv_cache_usage gauge). Long "
            "contexts fill the cache before the batch is full."
        ),
    )
    target_cpu_utilization_percent: int | None = Field(
        default=None,
        alias="targetCPUUtilizationPercent",
        ge=1,
        le=100,
        description="Average CPU utilization (percent of the request) per replica.",
    )
    target_memory_utilization_percent: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=(
            "Average memory utilization (percent of the request) per replica. A weak signal for a "
            "model server (weights and the KV cache's buffers dominate); prefer the gauges."
        ),
    )
    scale_to_zero: ScaleToZero | None = Field(
        default=None,
        description=(
            "Opt in to scaling to zero when idle (actuator KEDA only); minReplicas is then the "
            "floor while active."
        ),
    )
    scale_down_stabilization_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description=(
            "How long load must stay low before scaling down. Unset: three times the measured "
            "startup time of the pods (status.measuredStartupSeconds), at least 300."
        ),
    )

    @property
    def resource_targets(self) -> dict[str, int]:
        """The Resource-metric targets (utilization percent by resource name)."""
        targets = {
            "cpu": self.target_cpu_utilization_percent,
            "memory": self.target_memory_utilization_percent,
        }
        return {name: value for name, value in targets.items() if value is not None}

    @model_validator(mode="after")
    def _check(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MIN_MAX_MESSAGE)
        targets = (
            self.target_queue_depth,
            self.target_batch_fill_percent,
            self.target_kv_cache_usage_percent,
            self.target_cpu_utilization_percent,
            self.target_memory_utilization_percent,
        )
        if all(target is None for target in targets):
            raise ValueError(TARGET_MESSAGE)
        if self.actuator == "KEDA" and self.resource_targets:
            raise ValueError(KEDA_CPU_MESSAGE)
        if self.scale_to_zero is not None and self.actuator != "KEDA":
            raise ValueError(SCALE_TO_ZERO_MESSAGE)
        return self


class Rollout(ApiModel):
    """How new pods replace old ones."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.maxSurge > 0 || self.maxUnavailable > 0",
                ROLLOUT_MESSAGE,
            )
        )
    )

    max_surge: int = Field(
        default=1,
        ge=0,
        le=100,
        description=(
            "Extra pods during a rollout. Set 0 when the cluster has no spare GPU for a surge pod."
        ),
    )
    max_unavailable: int = Field(
        default=0, ge=0, le=100, description="Pods that may be missing during a rollout."
    )

    @model_validator(mode="after")
    def _check(self) -> Rollout:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError(ROLLOUT_MESSAGE)
        return self


class ServiceConfig(ApiModel):
    """The Service in front of the replicas."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="Service type."
    )
    port: int = Field(
        default=80, ge=1, le=65535, description="Service port (targets the server's http port)."
    )


class Monitoring(ApiModel):
    """Prometheus scraping of the server's /metrics."""

    service_monitor: bool = Field(
        default=False,
        description=(
            "Create a ServiceMonitor (monitoring.coreos.com/v1). Skipped, with condition "
            "MonitoringReady=False reason CRDNotInstalled, when the Prometheus Operator is absent."
        ),
    )
    interval: str = Field(
        default="30s", pattern=r"^[0-9]+(ms|s|m|h)$", description="Scrape interval."
    )


class NetworkPolicyConfig(ApiModel):
    """An opt-in NetworkPolicy that admits traffic to the server port only from chosen peers."""

    enabled: bool = Field(default=False, description="Create the NetworkPolicy.")
    allowed_namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Namespaces (by name) whose pods may reach the server, besides this namespace "
            "(e.g. your gateway's and Prometheus' namespaces). Egress is not restricted."
        ),
    )


class DisruptionBudget(ApiModel):
    """The PodDisruptionBudget, created when more than one replica can exist."""

    enabled: bool = Field(default=True, description="Create the PodDisruptionBudget.")
    max_unavailable: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Replicas a voluntary disruption (drain) may take at once.",
    )


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration)."""

    key: QualifiedName | None = Field(
        default=None, description="Taint key; empty matches all keys."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal."
    )
    value: LabelValue | None = Field(default=None, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )


class PodTemplate(ApiModel):
    """The escape hatch: pod-level settings merged into what the operator renders."""

    labels: dict[QualifiedName, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra pod labels (the operator's own labels win).",
        json_schema_extra=keys_rule("spec.podTemplate.labels"),
    )
    annotations: dict[QualifiedName, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra pod annotations.",
        json_schema_extra=keys_rule("spec.podTemplate.annotations"),
    )
    node_selector: dict[QualifiedName, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra node selector terms, merged with the GPU product selector.",
        json_schema_extra=keys_rule("spec.podTemplate.nodeSelector"),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description="Extra tolerations, added to the nvidia.com/gpu NoSchedule toleration.",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description=(
            "A core/v1 Affinity that replaces the operator's default (preferred anti-affinity that "
            "spreads replicas across nodes)."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: ObjectName | None = Field(
        default=None, description="PriorityClass of the pods."
    )
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount the pods run as."
    )


PROMETHEUS_DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
PROMETHEUS_LABEL_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
PrometheusDuration = Annotated[str, Field(max_length=32, pattern=PROMETHEUS_DURATION_PATTERN)]


class AvailabilityObjective(ApiModel):
    """The share of API requests answered without a server error (5xx) or a 429."""

    objective: float = Field(
        ge=50, lt=100, description="Target percentage of good requests, e.g. 99.9."
    )


def _bucket_message(field: str, histogram: str, buckets: tuple[float, ...]) -> str:
    listed = ", ".join(f"{bound:g}" for bound in buckets)
    return (
        f"spec.slo.{field}.thresholdSeconds must be a bucket bound of the server's {histogram} "
        f"histogram: {listed}"
    )


def _bucket_rule(message: str, buckets: tuple[float, ...]) -> dict[str, Any]:
    return cel_rules((f"self.thresholdSeconds in [{', '.join(map(repr, buckets))}]", message))


TTFT_BUCKET_MESSAGE = _bucket_message("timeToFirstToken", "time-to-first-token", TTFT_BUCKETS)
E2E_BUCKET_MESSAGE = _bucket_message("endToEndLatency", "end-to-end latency", E2E_BUCKETS)


class LatencyObjective(ApiModel):
    """The share of generation requests within a latency threshold. The threshold is one of the
    server histogram's bucket bounds, so the indicator is exact."""

    objective: float = Field(
        ge=50, lt=100, description="Target percentage of requests within the threshold."
    )
    threshold_seconds: float = Field(
        gt=0, description="The threshold, in seconds: one of the histogram's bucket bounds."
    )


class TimeToFirstTokenObjective(LatencyObjective):
    """The share of generation requests whose first token came within a threshold."""

    model_config = ConfigDict(json_schema_extra=_bucket_rule(TTFT_BUCKET_MESSAGE, TTFT_BUCKETS))

    @model_validator(mode="after")
    def _check(self) -> TimeToFirstTokenObjective:
        if self.threshold_seconds not in TTFT_BUCKETS:
            raise ValueError(TTFT_BUCKET_MESSAGE)
        return self


class EndToEndLatencyObjective(LatencyObjective):
    """The share of generation requests finished within a threshold."""

    model_config = ConfigDict(json_schema_extra=_bucket_rule(E2E_BUCKET_MESSAGE, E2E_BUCKETS))

    @model_validator(mode="after")
    def _check(self) -> EndToEndLatencyObjective:
        if self.threshold_seconds not in E2E_BUCKETS:
            raise ValueError(E2E_BUCKET_MESSAGE)
        return self


class BurnRateAlert(ApiModel):
    """One multi-window burn-rate alert: fires when the error budget burns `factor` times too
    fast over both windows."""

    severity: Literal["page", "ticket"] = Field(
        description="page renders severity=critical, ticket severity=warning."
    )
    factor: float = Field(gt=0, le=1000, description="Burn rate (1 spends the budget in window).")
    long_window: PrometheusDuration = Field(description="The long window, e.g. 1h.")
    short_window: PrometheusDuration = Field(
        description="The short window (resolves the alert soon after the burn stops), e.g. 5m."
    )


class SLO(ApiModel):
    """Service level objectives, rendered as a PrometheusRule with multi-window multi-burn-rate
    alerts (the SRE workbook's method)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "has(self.availability) || has(self.timeToFirstToken) || has(self.endToEndLatency)",
                SLO_OBJECTIVE_MESSAGE,
            )
        )
    )

    availability: AvailabilityObjective | None = Field(
        default=None,
        description="Share of API requests answered without a 5xx or a 429 (load shed).",
    )
    time_to_first_token: TimeToFirstTokenObjective | None = Field(
        default=None, description="Share of generation requests with a fast first token."
    )
    end_to_end_latency: EndToEndLatencyObjective | None = Field(
        default=None, description="Share of generation requests finished within a threshold."
    )
    window: PrometheusDuration = Field(
        default="30d", description="The SLO window (for the error budget left)."
    )
    min_requests: int = Field(
        default=100,
        ge=0,
        le=1_000_000,
        description="No alert while the long window holds fewer requests than this.",
    )
    alert_labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description="Labels added to every alert, for Alertmanager routing (e.g. team: ml).",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, k.matches('{PROMETHEUS_LABEL_PATTERN}'))",
                    "message": (
                        "every key of spec.slo.alertLabels must be a Prometheus label name "
                        "([a-zA-Z_][a-zA-Z0-9_]*)"
                    ),
                }
            ]
        },
    )
    runbook_url: str | None = Field(
        default=None, max_length=2048, description="Added to every alert as runbook_url."
    )
    burn_rate_alerts: list[BurnRateAlert] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description=(
            "The alerts' windows and factors. Unset: the SRE workbook's, for a 30-day window: "
            "page at 14.4x over 1h and 5m, and 6x over 6h and 30m; ticket at 3x over 1d and 2h, "
            "and 1x over 3d and 6h."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> SLO:
        objectives = (self.availability, self.time_to_first_token, self.end_to_end_latency)
        if all(objective is None for objective in objectives):
            raise ValueError(SLO_OBJECTIVE_MESSAGE)
        for key in self.alert_labels:
            if not re.match(PROMETHEUS_LABEL_PATTERN, key):
                raise ValueError(f"spec.slo.alertLabels: {key!r} is not a Prometheus label name")
        return self


# --- Canary and routing -------------------------------------------------------------------------

CANARY_NAME_MESSAGE = (
    "metadata.name must be at most 56 characters when spec.canary or spec.route is set: the "
    "canary's children are named <name>-canary"
)
CHECK_SOURCE_MESSAGE = "a canary check needs exactly one of metric and query"
CHECK_BOUND_MESSAGE = "a canary check needs at least one of maxIncrease, maxRatio and max"
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"
CanaryMetric = Literal["ErrorRatio", "TimeToFirstTokenP95", "InterTokenLatencyP95", "QueueWaitP95"]


class HeaderMatch(ApiModel):
    """An HTTP header, exact match."""

    name: str = Field(max_length=256, pattern=HEADER_NAME_PATTERN, description="Header name.")
    value: str = Field(min_length=1, max_length=4096, description="Header value, exact.")


class CanaryTraffic(ApiModel):
    """How requests reach the canary besides the steps' weights."""

    weight: int = Field(
        default=10,
        ge=0,
        le=100,
        description=(
            "Percent of requests the canary gets when it has no steps (it then holds there: "
            "promote by folding spec.canary into the spec, roll back by removing it)."
        ),
    )
    header: HeaderMatch | None = Field(
        default=None,
        description=(
            "Requests carrying this header always reach the canary once it is ready, whatever "
            "the weight (an HTTPRoute rule; needs spec.route)."
        ),
    )


class CanaryStep(ApiModel):
    """One step: a weight, held for a pause and/or until an analysis window passes."""

    weight: int = Field(ge=0, le=100, description="Percent of requests to the canary.")
    pause: PrometheusDuration | None = Field(
        default=None, description="Hold the weight at least this long (e.g. 5m)."
    )
    analysis: bool = Field(
        default=False,
        description=(
            "Advance only after an analysis window at this weight passes (spec.canary.analysis)."
        ),
    )


class CanaryCheck(ApiModel):
    """One check of an analysis window: the canary's value against stable's, same window."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("has(self.metric) != has(self.query)", CHECK_SOURCE_MESSAGE),
            (
                "has(self.maxIncrease) || has(self.maxRatio) || has(self.max)",
                CHECK_BOUND_MESSAGE,
            ),
        )
    )

    name: str = Field(
        max_length=63, pattern=DNS_LABEL_PATTERN, description="Name shown in status and events."
    )
    metric: CanaryMetric | None = Field(
        default=None,
        description=(
            "A built-in check on the server's own series: ErrorRatio (5xx and 429 over all API "
            "requests), TimeToFirstTokenP95, InterTokenLatencyP95, QueueWaitP95 (seconds)."
        ),
    )
    query: str | None = Field(
        default=None,
        max_length=4096,
        description=(
            "A custom PromQL query returning one number, run once per variant; variant, "
            "namespace, name and window in double braces are replaced (docs/canary.md)."
        ),
    )
    max_increase: float | None = Field(
        default=None, ge=0, description="Fail when canary - stable is more than this."
    )
    max_ratio: float | None = Field(
        default=None, gt=0, description="Fail when canary / stable is more than this."
    )
    max: float | None = Field(
        default=None, description="Fail when the canary's value is above this."
    )

    @model_validator(mode="after")
    def _check(self) -> CanaryCheck:
        if (self.metric is None) == (self.query is None):
            raise ValueError(CHECK_SOURCE_MESSAGE)
        if self.max_increase is None and self.max_ratio is None and self.max is None:
            raise ValueError(CHECK_BOUND_MESSAGE)
        return self


DEFAULT_CHECKS: tuple[CanaryCheck, ...] = (
    CanaryCheck(name="error-ratio", metric="ErrorRatio", max_increase=0.01),
    CanaryCheck(name="ttft-p95", metric="TimeToFirstTokenP95", max_ratio=1.5),
)


class CanaryAnalysis(ApiModel):
    """Metric-gated progress: each window compares the canary with stable over the same window."""

    interval: PrometheusDuration = Field(
        default="1m", description="Length of each analysis window, and the time between them."
    )
    min_samples: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Requests each variant must have served in a window; fewer is Inconclusive.",
    )
    failure_limit: int = Field(
        default=0, ge=0, le=100, description="Failed windows tolerated; one more rolls back."
    )
    inconclusive_timeout: PrometheusDuration = Field(
        default="10m",
        description=(
            "How long Inconclusive windows (too few samples, no data, Prometheus down) pause the "
            "canary before it is rolled back."
        ),
    )
    checks: list[CanaryCheck] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "The checks of every window. Empty: error ratio at most 1 point above stable's and "
            "time to first token p95 at most 1.5x stable's."
        ),
    )


def _overlay_of(
    model: type[ApiModel], name: str, *, inherited: frozenset[str] = frozenset()
) -> type[ApiModel]:
    """`model` with every field optional and no default (not even in the CRD, where the
    apiserver would fill one in): what is set replaces the base's value, the rest is the base's.
    The `inherited` fields are left out: the overlay cannot replace them."""
    fields: dict[str, Any] = {
        field: (
            cast(Any, info.annotation) | None,
            FieldInfo.merge_field_infos(info, default=None, default_factory=None),
        )
        for field, info in model.model_fields.items()
        if field not in inherited
    }
    doc = f"{model.__doc__} Only the fields set here replace stable's."
    return create_model(name, __base__=ApiModel, __doc__=doc, **fields)


CANARY_INHERITED_SERVER = frozenset({"api_keys"})
"""spec.server fields the canary always takes from stable (its overlay has no such field)."""

if TYPE_CHECKING:
    ServerOverlay = ServerConfig
else:
    # The canary serves stable's clients through the same Service or route, so it takes the
    # same keys: a canary with other keys would answer 401 to a share of the clients.
    ServerOverlay = _overlay_of(ServerConfig, "ServerOverlay", inherited=CANARY_INHERITED_SERVER)


class Canary(ApiModel):
    """A second variant beside stable: an overlay of stable's settings, a traffic split, steps
    and an analysis that compares it with stable."""

    image: str | None = Field(
        default=None, min_length=1, max_length=1024, description="The canary's server image."
    )
    model: ModelSource | None = Field(
        default=None, description="The canary's model (replaces spec.model whole)."
    )
    server: ServerOverlay | None = Field(
        default=None,
        description=(
            "The canary's server settings; the fields set here replace stable's, the others are "
            "stable's."
        ),
    )
    replicas: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description=(
            "Canary replicas. Unset: enough for its share of stable's replicas at the current "
            "weight (at least 1)."
        ),
    )
    traffic: CanaryTraffic = section(CanaryTraffic, "The weight without steps, the header rule.")
    steps: list[CanaryStep] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Weights in order; after the last one the canary is promoted. Empty: hold at "
            "traffic.weight."
        ),
    )
    analysis: CanaryAnalysis | None = Field(
        default=None,
        description=(
            "Compare the canary with stable every interval while it has weight; a failure beyond "
            "failureLimit rolls back, Inconclusive pauses then rolls back after its timeout."
        ),
    )


class ParentReference(ApiModel):
    """A Gateway (or listener) the HTTPRoute attaches to."""

    name: ObjectName = Field(description="The Gateway's name.")
    namespace: NamespaceName | None = Field(
        default=None, description="The Gateway's namespace (default: this one)."
    )
    section_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_LABEL_PATTERN, description="A listener's name."
    )


class Route(ApiModel):
    """An HTTPRoute (gateway.networking.k8s.io/v1) in front of the variants."""

    parent_refs: list[ParentReference] = Field(
        min_length=1, max_length=32, description="Gateways the route attaches to."
    )
    hostnames: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list, max_length=16, description="Hostnames the route answers for."
    )


class ModelDeploymentSpec(ApiModel):
    """Desired state: which model to serve, on what hardware, at what scale."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "!(has(self.replicas) && has(self.autoscaling))",
                REPLICAS_AUTOSCALING_MESSAGE,
            ),
        )
    )

    model: ModelSource = Field(
        description="The model to serve: where its weights are and how the server loads them."
    )
    image: str = Field(
        default="ghcr.io/modelplane/modelplane-server:0.1.0",
        min_length=1,
        max_length=1024,
        description="The server image (must implement docs/server-contract.md).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy."
    )
    server: ServerConfig = section(
        ServerConfig,
        "The inference server's batching, queueing and shutdown knobs (rendered as its flags).",
    )
    accelerator: Accelerator = section(
        Accelerator, "GPUs (type and count) and host CPU and memory per replica."
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=(
            "Fixed replica count (the scale subresource's target). Unset without autoscaling means"
            " 1. Mutually exclusive with autoscaling."
        ),
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description=(
            "Let a HorizontalPodAutoscaler (autoscaling/v2) own the replica count between "
            "minReplicas and maxReplicas. Mutually exclusive with replicas."
        ),
    )
    suspend: bool = Field(
        default=False,
        description=(
            "Scale to zero and remove the autoscaler and disruption budget; keeps the Service."
        ),
    )
    rollout: Rollout = section(
        Rollout, "How a spec change replaces pods (a rolling update of the Deployment)."
    )
    service: ServiceConfig = section(
        ServiceConfig,
        "The Service in front of the ready replicas; status.url is its in-cluster URL.",
    )
    monitoring: Monitoring = section(
        Monitoring, "Prometheus scraping of the server's /metrics through a ServiceMonitor."
    )
    network_policy: NetworkPolicyConfig = section(
        NetworkPolicyConfig,
        "An opt-in NetworkPolicy admitting traffic to the server only from chosen namespaces.",
    )
    pod_disruption_budget: DisruptionBudget = section(
        DisruptionBudget,
        "A PodDisruptionBudget limiting voluntary disruptions (node drains); created only "
        "when more than one replica can exist.",
    )
    pod_template: PodTemplate = section(
        PodTemplate,
        "Pod-level overrides (the escape hatch): labels, annotations, scheduling, identity.",
    )
    slo: SLO | None = Field(
        default=None,
        description=(
            "Service level objectives, alerted on by burn rate through a PrometheusRule "
            "(monitoring.coreos.com/v1; MonitoringReady says when its CRD is missing)."
        ),
    )
    route: Route | None = Field(
        default=None,
        description=(
            "An HTTPRoute from a Gateway to the model, which splits traffic between stable and "
            "canary by weight and header (needs the Gateway API CRDs; TrafficSplit says)."
        ),
    )
    canary: Canary | None = Field(
        default=None,
        description=(
            "A canary: a second variant with its own settings that gets a share of the requests, "
            "advances through steps while its analysis against stable passes, and is promoted or "
            "rolled back."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> ModelDeploymentSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError(REPLICAS_AUTOSCALING_MESSAGE)
        return self


class Condition(ApiModel):
    """A metav1.Condition. Every condition type's healthy value is True."""

    type: str = Field(description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason, machine-readable.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this condition was computed from."
    )


class ResolvedGPU(ApiModel):
    """The GPU request actually applied."""

    type: str | None = Field(
        default=None, description="nvidia.com/gpu.product node selector, if any."
    )
    count: int = Field(description="nvidia.com/gpu per replica.")


class ResolvedConfig(ApiModel):
    """The configuration the operator actually applied, with every default resolved."""

    image: str = Field(description="Server image.")
    gpu: ResolvedGPU = Field(description="GPU request per replica.")
    model_path: str = Field(description="The --model value the server receives.")
    model_size_gi_b: float = Field(
        alias="modelSizeGiB", description="Model size used for the budget."
    )
    model_size_source: Literal["declared", "estimated", "measured"] = Field(
        description=(
            "Whether modelSizeGiB came from spec.model.sizeGiB, an estimate, or the size the "
            "ModelCache measured."
        )
    )
    model_cache: str | None = Field(
        default=None, description="The ModelCache whose claim the pods mount, if any."
    )
    model_claim: str | None = Field(
        default=None, description="The claim holding the weights the pods mount, if any."
    )
    startup_probe_budget_seconds: int = Field(
        description="failureThreshold x periodSeconds of the startup probe."
    )
    termination_grace_period_seconds: int = Field(description="Pod termination grace period.")
    desired_replicas: int | None = Field(
        default=None,
        description="Replica count the operator sets (unset when an autoscaler owns it).",
    )
    autoscaler: str | None = Field(default=None, description="The HPA's range, e.g. 1-4.")
    actuator: Literal["HPA", "KEDA"] | None = Field(
        default=None, description="What owns the replica count (spec.autoscaling.actuator)."
    )
    scale_up_period_seconds: int | None = Field(
        default=None,
        description=(
            "The autoscaler adds at most 100% (or 4 pods) per this period: the measured "
            "startup time, so it sees new replicas serve before adding more."
        ),
    )
    scale_down_stabilization_seconds: int | None = Field(
        default=None, description="How long load must stay low before a scale-down."
    )
    children: list[str] = Field(default_factory=list, description="Child objects as Kind/name.")


CanaryPhase = Literal["Progressing", "Paused", "Promoting", "Promoted", "RolledBack"]
Verdict = Literal["Pass", "Fail", "Inconclusive"]


class CheckResult(ApiModel):
    """One check of the last analysis window."""

    name: str = Field(description="The check.")
    verdict: Verdict = Field(description="Pass, Fail or Inconclusive.")
    value: float | None = Field(default=None, description="The canary's value.")
    baseline: float | None = Field(default=None, description="Stable's value, same window.")
    canary_samples: int = Field(default=0, description="Requests the canary served in the window.")
    stable_samples: int = Field(default=0, description="Requests stable served in the window.")
    message: str = Field(default="", description="Why, in words.")


class CanaryDecision(ApiModel):
    """One decision the operator took about the canary."""

    time: str = Field(description="When (RFC 3339).")
    decision: str = Field(description="What: Started, Step, Inconclusive, Failed, RolledBack, ...")
    message: str = Field(default="", description="Why.")


class CanaryStatus(ApiModel):
    """Where the canary stands."""

    revision: str = Field(description="Hash of the spec.canary this status describes.")
    phase: CanaryPhase = Field(
        description="Progressing, Paused (Inconclusive), Promoting, Promoted or RolledBack."
    )
    step: int = Field(default=0, description="Index of the current step (0-based).")
    steps: int = Field(default=0, description="Number of steps.")
    step_started_at: str | None = Field(
        default=None, description="When the current step's weight began to be routed."
    )
    weight: int = Field(default=0, description="Percent of requests actually routed to the canary.")
    split: Literal["Gateway", "ReplicaRatio"] = Field(
        default="Gateway",
        description=(
            "How the split is made: HTTPRoute weights, or the replica ratio behind the Service."
        ),
    )
    replicas: int = Field(default=0, description="Canary replicas that fit now.")
    borrowed: int = Field(
        default=0,
        description="Replicas stable lends the canary because no GPU of the type is free.",
    )
    failures: int = Field(default=0, description="Failed analysis windows so far.")
    inconclusive_since: str | None = Field(
        default=None, description="Since when every window was Inconclusive."
    )
    last_analysis_at: str | None = Field(default=None, description="When the last window ended.")
    last_pass_at: str | None = Field(default=None, description="When a window last passed.")
    analysis: list[CheckResult] = Field(
        default_factory=list, description="The last window's checks."
    )
    history: list[CanaryDecision] = Field(
        default_factory=list, description="The latest decisions, oldest first."
    )
    summary: str = Field(default="", description="For kubectl get: e.g. 20% step 2/4.")


class ModelDeploymentStatus(ApiModel):
    """Observed state, written by the operator through the status subresource."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description=(
            "Ready, Progressing, PodsHealthy, AutoscalerReady, MonitoringReady. Healthy is True "
            "for all."
        ),
    )
    replicas: int | None = Field(
        default=None, description="Pods of the Deployment (scale subresource)."
    )
    ready_replicas: int | None = Field(default=None, description="Ready pods.")
    updated_replicas: int | None = Field(default=None, description="Pods of the current revision.")
    desired_replicas: int | None = Field(default=None, description="Replicas wanted right now.")
    gpu: str | None = Field(default=None, description="GPUs per replica and type, for kubectl get.")
    ready: str | None = Field(default=None, description="ready/desired, for kubectl get.")
    selector: str | None = Field(
        default=None, description="Pod label selector (scale subresource)."
    )
    url: str | None = Field(
        default=None, description="In-cluster URL of the OpenAI-compatible API."
    )
    resolved: ResolvedConfig | None = Field(
        default=None, description="Configuration actually applied."
    )
    measured_startup_seconds: int | None = Field(
        default=None,
        description=(
            "Longest time from a current pod's start to Ready (rounded up to 5 s): what a new "
            "replica takes to serve. The autoscaler's windows derive from it."
        ),
    )
    canary: CanaryStatus | None = Field(
        default=None, description="The canary's phase, step, routed weight and analysis."
    )


class ModelDeployment(ApiModel):
    """A model served by a fleet of batching inference servers on GPUs."""

    model_config = ConfigDict(extra="ignore")

    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state.")


EnvVarSource.model_rebuild()
EnvVar.model_rebuild()
ServerConfig.model_rebuild()

"""Pure rendering: a ModelDeployment spec in, the child manifests (as dicts) out.

No I/O, no clock, no randomness: the same input always renders byte-identical output, which is what
makes golden files, `modelplane-operator render` (a GitOps preview) and write-free steady state
possible. Children are built with lightkube's typed models rather than dict literals so that a
misspelt field or a wrong type is a mypy error here instead of a silently pruned field in the
cluster; `to_dict()` then drops every unset field, so we send only the fields we mean to own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from lightkube.models.apps_v1 import (
    DeploymentSpec,
    DeploymentStrategy,
    RollingUpdateDeployment,
)
from lightkube.models.core_v1 import (
    Affinity,
    Capabilities,
    ConfigMapKeySelector,
    Container,
    ContainerPort,
    EmptyDirVolumeSource,
    EnvVar,
    EnvVarSource,
    HTTPGetAction,
    Lifecycle,
    LifecycleHandler,
    PersistentVolumeClaimVolumeSource,
    PodAffinityTerm,
    PodAntiAffinity,
    PodSecurityContext,
    PodSpec,
    PodTemplateSpec,
    Probe,
    ResourceRequirements,
    SeccompProfile,
    SecretKeySelector,
    SecurityContext,
    ServicePort,
    ServiceSpec,
    SleepAction,
    Toleration,
    Volume,
    VolumeMount,
    WeightedPodAffinityTerm,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta, OwnerReference
from lightkube.models.networking_v1 import (
    NetworkPolicyIngressRule,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicySpec,
)
from lightkube.models.policy_v1 import PodDisruptionBudgetSpec

from modelplane_operator import autoscaling as autoscaling_plan
from modelplane_operator import server_contract, slo_rules
from modelplane_operator.autoscaling import Actuator, Windows
from modelplane_operator.kinds import (
    PROMETHEUS_RULE,
    SCALED_OBJECT,
    ChildKind,
    kind_of,
)
from modelplane_operator.models import (
    API_VERSION,
    KIND,
    ModelDeploymentSpec,
    ModelSource,
    ResolvedConfig,
    ResolvedGPU,
)
from modelplane_operator.names import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    child_labels,
    selector_labels,
)

Manifest = dict[str, Any]

SERVER_CONTAINER = "server"
MODEL_VOLUME = "model"
MODEL_MOUNT = "/models"
PROMETHEUS_URL_MISSING = (
    "actuator KEDA needs the operator's Prometheus URL (chart value prometheus.url, "
    "MODELPLANE_OPERATOR_PROMETHEUS_URL) for its triggers; no ScaledObject was created"
)
HF_TOKEN_KEY = "token"  # noqa: S105 - the name of a Secret key, not a secret

# Startup budget: time to start CUDA, load the weights and warm up. Loading shards spreads over the
# GPUs of one replica, so the per-GiB cost divides by the GPU count.
STARTUP_BASE_SECONDS = 120
STARTUP_SECONDS_PER_GIB = 15
STARTUP_PROBE_PERIOD_SECONDS = 10
# Deployment progress deadline on top of the startup budget: scheduling, image pull and (for hf://)
# the download in the init container, which the startup probe does not cover.
PROGRESS_MARGIN_SECONDS = 300
DOWNLOAD_SECONDS_PER_GIB = 20
ESTIMATED_MODEL_GIB = 16.0
EMBEDDED_MODEL_GIB = 1.0


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment the children belong to. No uid: render for preview, no owner "
    "reference."""

    name: str
    namespace: str
    uid: str | None = None


@dataclass(frozen=True)
class RenderOptions:
    """Facts about the cluster that change what is rendered: which add-on CRDs are installed
    (children of a kind whose CRD is missing are left out, and `Rendered.skipped` says so)."""

    installed_crds: frozenset[str] = frozenset()
    # The Prometheus HTTP API KEDA's triggers query (operator setting prometheusUrl).
    prometheus_url: str | None = None
    # Labels on every PrometheusRule, for the Prometheus' ruleSelector.
    rule_labels: Mapping[str, str] = field(default_factory=dict)
    # status.measuredStartupSeconds: the autoscaler's windows derive from it.
    measured_startup_seconds: int | None = None


@dataclass(frozen=True)
class AutoscalerPlan:
    """Which actuator owns the replicas and its timing; `problem` when it cannot be rendered."""

    actuator: Actuator
    windows: Windows
    problem: str | None = None


@dataclass(frozen=True)
class Rendered:
    """What one ModelDeployment should look like in the cluster."""

    children: list[Manifest]
    resolved: ResolvedConfig
    # Kinds the spec asks for whose CRD is not installed.
    skipped: tuple[ChildKind, ...] = ()
    autoscaler: AutoscalerPlan | None = None
    notes: list[str] = field(default_factory=list)


def service_url(owner: Owner, port: int) -> str:
    """In-cluster URL of the server's OpenAI-compatible API."""
    suffix = "" if port == 80 else f":{port}"
    return f"http://{owner.name}.{owner.namespace}.svc{suffix}{server_contract.OPENAI_BASE_PATH}"


def _metadata(owner: Owner) -> ObjectMeta:
    references = None
    if owner.uid:
        references = [
            OwnerReference(
                apiVersion=API_VERSION,
                kind=KIND,
                name=owner.name,
                uid=owner.uid,
                controller=True,
                blockOwnerDeletion=True,
            )
        ]
    return ObjectMeta(
        name=owner.name,
        namespace=owner.namespace,
        labels=child_labels(owner.name),
        ownerReferences=references,
    )


def _manifest(api_version: str, kind: str, metadata: ObjectMeta, spec: Any) -> Manifest:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata.to_dict(),
        "spec": spec.to_dict() if hasattr(spec, "to_dict") else spec,
    }


@dataclass(frozen=True)
class ModelPlacement:
    """How the weights reach the server: its --model value plus the volumes and init containers."""

    model_path: str
    volumes: list[Volume]
    mounts: list[VolumeMount]
    init_containers: list[Container]
    download_gib: float


def _gguf_file(model: ModelSource) -> str | None:
    if model.gguf_file:
        return model.gguf_file
    return None


def place_model(
    model: ModelSource, image: str, pull_policy: str, size_gib: float
) -> ModelPlacement:
    """Turn the model URI into the server's --model path and whatever gets the weights there."""
    uri = model.uri
    if uri.startswith("hf://"):
        repo = uri.removeprefix("hf://")
        target = f"{MODEL_MOUNT}/{repo}"
        command = ["hf", "download", repo, "--local-dir", target]
        if model.revision:
            command += ["--revision", model.revision]
        if model.gguf_file:
            command += ["--include", model.gguf_file]
        env = [EnvVar(name="HF_HOME", value=f"{MODEL_MOUNT}/.hf-home")]
        if model.hf_token_secret:
            env.append(
                EnvVar(
                    name="HF_TOKEN",
                    valueFrom=EnvVarSource(
                        secretKeyRef=SecretKeySelector(name=model.hf_token_secret, key=HF_TOKEN_KEY)
                    ),
                )
            )
        mount = VolumeMount(name=MODEL_VOLUME, mountPath=MODEL_MOUNT)
        downloader = Container(
            name="model-download",
            image=image,
            imagePullPolicy=pull_policy,
            command=command,
            env=env,
            volumeMounts=[mount],
            securityContext=_container_security(),
            resources=ResourceRequirements(requests={"cpu": "1", "memory": "1Gi"}),
        )
        return ModelPlacement(
            model_path=target,
            volumes=[Volume(name=MODEL_VOLUME, emptyDir=EmptyDirVolumeSource())],
            mounts=[VolumeMount(name=MODEL_VOLUME, mountPath=MODEL_MOUNT, readOnly=True)],
            init_containers=[downloader],
            download_gib=size_gib,
        )
    if uri.startswith("pvc://"):
        claim, _, sub_path = uri.removeprefix("pvc://").partition("/")
        path = f"{MODEL_MOUNT}/{sub_path}".rstrip("/") if sub_path else MODEL_MOUNT
        return ModelPlacement(
            model_path=path,
            volumes=[
                Volume(
                    name=MODEL_VOLUME,
                    persistentVolumeClaim=PersistentVolumeClaimVolumeSource(
                        claimName=claim, readOnly=True
                    ),
                )
            ],
            mounts=[VolumeMount(name=MODEL_VOLUME, mountPath=MODEL_MOUNT, readOnly=True)],
            init_containers=[],
            download_gib=0.0,
        )
    path = uri.removeprefix("file://")
    # "/" alone is the server's embedded default model: an empty --model.
    return ModelPlacement(
        model_path="" if path == "/" else path,
        volumes=[],
        mounts=[],
        init_containers=[],
        download_gib=0.0,
    )


def model_size(model: ModelSource) -> tuple[float, Literal["declared", "estimated"]]:
    """The model size used for budgets, and whether it was declared or estimated."""
    if model.size_gi_b is not None:
        return model.size_gi_b, "declared"
    if model.uri in ("/", "file:///"):
        return EMBEDDED_MODEL_GIB, "estimated"
    return ESTIMATED_MODEL_GIB, "estimated"


def startup_budget_seconds(spec: ModelDeploymentSpec, size_gib: float) -> int:
    """Seconds the startup probe allows, rounded up to whole probe periods."""
    if spec.server.startup_timeout_seconds is not None:
        budget = spec.server.startup_timeout_seconds
    else:
        gpus = max(1, spec.accelerator.count)
        budget = STARTUP_BASE_SECONDS + math.ceil(size_gib * STARTUP_SECONDS_PER_GIB / gpus)
    return math.ceil(budget / STARTUP_PROBE_PERIOD_SECONDS) * STARTUP_PROBE_PERIOD_SECONDS


def _container_security() -> SecurityContext:
    return SecurityContext(
        allowPrivilegeEscalation=False,
        capabilities=Capabilities(drop=["ALL"]),
        runAsNonRoot=True,
        seccompProfile=SeccompProfile(type="RuntimeDefault"),
    )


def _env(spec: ModelDeploymentSpec) -> list[EnvVar]:
    rendered = []
    for variable in spec.server.env:
        source = None
        if variable.value_from is not None:
            secret = variable.value_from.secret_key_ref
            config_map = variable.value_from.config_map_key_ref
            source = EnvVarSource(
                secretKeyRef=SecretKeySelector(
                    name=secret.name, key=secret.key, optional=secret.optional
                )
                if secret
                else None,
                configMapKeyRef=ConfigMapKeySelector(
                    name=config_map.name, key=config_map.key, optional=config_map.optional
                )
                if config_map
                else None,
            )
        rendered.append(EnvVar(name=variable.name, value=variable.value, valueFrom=source))
    return rendered


def _probe(path: str, period: int, timeout: int, failures: int) -> Probe:
    return Probe(
        httpGet=HTTPGetAction(path=path, port=server_contract.PORT_NAME),
        periodSeconds=period,
        timeoutSeconds=timeout,
        failureThreshold=failures,
    )


def _affinity(name: str, spec: ModelDeploymentSpec) -> Affinity:
    if spec.pod_template.affinity is not None:
        return cast(Affinity, Affinity.from_dict(spec.pod_template.affinity))
    # Preferred, not required: spreading must never keep a replica from scheduling.
    return Affinity(
        podAntiAffinity=PodAntiAffinity(
            preferredDuringSchedulingIgnoredDuringExecution=[
                WeightedPodAffinityTerm(
                    weight=100,
                    podAffinityTerm=PodAffinityTerm(
                        topologyKey="kubernetes.io/hostname",
                        labelSelector=LabelSelector(matchLabels=selector_labels(name)),
                    ),
                )
            ]
        )
    )


def desired_replicas(spec: ModelDeploymentSpec) -> int | None:
    """The Deployment's replicas as we set them; None when the HPA owns the field."""
    if spec.suspend:
        return 0
    if spec.autoscaling is not None:
        return None
    return 1 if spec.replicas is None else spec.replicas


def max_replicas(spec: ModelDeploymentSpec) -> int:
    """The most replicas that can exist, which decides whether a disruption budget makes sense."""
    if spec.suspend:
        return 0
    if spec.autoscaling is not None:
        return spec.autoscaling.max_replicas
    return 1 if spec.replicas is None else spec.replicas


def render_deployment(
    owner: Owner, spec: ModelDeploymentSpec, placement: ModelPlacement, startup_budget: int
) -> Manifest:
    """The Deployment running the server pods."""
    gpus = spec.accelerator.count
    args = server_contract.ServerArgs(
        model=placement.model_path,
        served_model_name=spec.model.served_model_name or owner.name,
        gguf_file=_gguf_file(spec.model),
        dtype=spec.model.dtype,
        device="cuda" if gpus > 0 else "cpu",
        max_batch_size=spec.server.max_batch_size,
        max_batch_tokens=spec.server.max_batch_tokens,
        max_wait_ms=spec.server.max_wait_ms,
        max_queue=spec.server.max_queue,
        drain_timeout_seconds=spec.server.drain_timeout_seconds,
        extra_args=tuple(spec.server.extra_args),
    )
    requests: dict[str, str] = {
        "cpu": str(spec.accelerator.cpu),
        "memory": str(spec.accelerator.memory),
    }
    limits: dict[str, str] = {"memory": str(spec.accelerator.memory)}
    if gpus > 0:
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    container = Container(
        name=SERVER_CONTAINER,
        image=spec.image,
        imagePullPolicy=spec.image_pull_policy,
        args=server_contract.container_args(args),
        ports=[
            ContainerPort(
                name=server_contract.PORT_NAME, containerPort=server_contract.PORT, protocol="TCP"
            )
        ],
        env=_env(spec) or None,
        resources=ResourceRequirements(requests=requests, limits=limits),
        startupProbe=_probe(
            server_contract.STARTUP_PATH,
            STARTUP_PROBE_PERIOD_SECONDS,
            5,
            startup_budget // STARTUP_PROBE_PERIOD_SECONDS,
        ),
        livenessProbe=_probe(server_contract.LIVENESS_PATH, 10, 5, 3),
        readinessProbe=_probe(server_contract.READINESS_PATH, 5, 3, 2),
        lifecycle=Lifecycle(
            preStop=LifecycleHandler(
                sleep=SleepAction(seconds=server_contract.PRE_STOP_SLEEP_SECONDS)
            )
        ),
        securityContext=_container_security(),
        volumeMounts=placement.mounts or None,
    )
    node_selector = dict(spec.pod_template.node_selector)
    tolerations: list[Toleration] = []
    if gpus > 0:
        tolerations.append(Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"))
        if spec.accelerator.type:
            node_selector[GPU_PRODUCT_LABEL] = spec.accelerator.type
    tolerations += [
        Toleration(
            key=item.key,
            operator=item.operator,
            value=item.value,
            effect=item.effect,
            tolerationSeconds=item.toleration_seconds,
        )
        for item in spec.pod_template.tolerations
    ]
    pod_labels = {**spec.pod_template.labels, **child_labels(owner.name)}
    pod = PodSpec(
        containers=[container],
        initContainers=placement.init_containers or None,
        volumes=placement.volumes or None,
        nodeSelector=node_selector or None,
        tolerations=tolerations or None,
        affinity=_affinity(owner.name, spec),
        priorityClassName=spec.pod_template.priority_class_name,
        serviceAccountName=spec.pod_template.service_account_name,
        # The server never talks to the Kubernetes API.
        automountServiceAccountToken=False,
        terminationGracePeriodSeconds=server_contract.termination_grace_seconds(
            spec.server.drain_timeout_seconds
        ),
        securityContext=PodSecurityContext(
            runAsNonRoot=True,
            runAsUser=1000,
            runAsGroup=1000,
            fsGroup=1000,
            seccompProfile=SeccompProfile(type="RuntimeDefault"),
        ),
    )
    progress_deadline = (
        startup_budget
        + PROGRESS_MARGIN_SECONDS
        + math.ceil(placement.download_gib * DOWNLOAD_SECONDS_PER_GIB)
    )
    deployment = DeploymentSpec(
        replicas=desired_replicas(spec),
        selector=LabelSelector(matchLabels=selector_labels(owner.name)),
        strategy=DeploymentStrategy(
            type="RollingUpdate",
            rollingUpdate=RollingUpdateDeployment(
                maxSurge=spec.rollout.max_surge, maxUnavailable=spec.rollout.max_unavailable
            ),
        ),
        progressDeadlineSeconds=progress_deadline,
        template=PodTemplateSpec(
            metadata=ObjectMeta(
                labels=pod_labels, annotations=dict(spec.pod_template.annotations) or None
            ),
            spec=pod,
        ),
    )
    return _manifest("apps/v1", "Deployment", _metadata(owner), deployment)


def render_service(owner: Owner, spec: ModelDeploymentSpec) -> Manifest:
    """The Service in front of the ready pods."""
    service = ServiceSpec(
        type=spec.service.type,
        selector=selector_labels(owner.name),
        ports=[
            ServicePort(
                name=server_contract.PORT_NAME,
                port=spec.service.port,
                targetPort=server_contract.PORT_NAME,
                protocol="TCP",
            )
        ],
    )
    return _manifest("v1", "Service", _metadata(owner), service)


def render_autoscaler(
    owner: Owner, spec: ModelDeploymentSpec, options: RenderOptions
) -> tuple[Manifest | None, AutoscalerPlan | None]:
    """The HPA or KEDA ScaledObject, when autoscaling is requested and not suspended; with the
    plan (actuator and windows) for status."""
    autoscaling = spec.autoscaling
    if autoscaling is None or spec.suspend:
        return None, None
    keda_usable = SCALED_OBJECT.crd in options.installed_crds and bool(options.prometheus_url)
    actuator = autoscaling_plan.choose_actuator(autoscaling, keda_usable)
    timing = autoscaling_plan.windows(autoscaling, options.measured_startup_seconds)
    plan = AutoscalerPlan(actuator=actuator, windows=timing)
    if actuator == "HPA":
        hpa = autoscaling_plan.hpa_spec(owner.name, autoscaling, timing)
        return _manifest("autoscaling/v2", "HorizontalPodAutoscaler", _metadata(owner), hpa), plan
    if not options.prometheus_url:
        return None, AutoscalerPlan(actuator, timing, problem=PROMETHEUS_URL_MISSING)
    scaled = autoscaling_plan.scaled_object_spec(
        owner.name, owner.namespace, autoscaling, timing, options.prometheus_url
    )
    manifest = {
        "apiVersion": SCALED_OBJECT.api_version,
        "kind": SCALED_OBJECT.kind,
        "metadata": _metadata(owner).to_dict(),
        "spec": scaled,
    }
    return manifest, plan


def render_disruption_budget(owner: Owner, spec: ModelDeploymentSpec) -> Manifest | None:
    """A PDB, when it is enabled and more than one replica can exist."""
    if not spec.pod_disruption_budget.enabled or max_replicas(spec) <= 1:
        return None
    pdb = PodDisruptionBudgetSpec(
        maxUnavailable=spec.pod_disruption_budget.max_unavailable,
        selector=LabelSelector(matchLabels=selector_labels(owner.name)),
    )
    return _manifest("policy/v1", "PodDisruptionBudget", _metadata(owner), pdb)


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
        "metadata": _metadata(owner).to_dict(),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner.name)},
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
    metadata = _metadata(owner).to_dict()
    metadata["labels"] = {**options.rule_labels, **metadata["labels"]}
    alerts = tuple(spec.slo.burn_rate_alerts or slo_rules.WORKBOOK_ALERTS)
    groups = slo_rules.render_rule_groups(spec.slo, owner.namespace, owner.name, alerts)
    return {
        "apiVersion": PROMETHEUS_RULE.api_version,
        "kind": PROMETHEUS_RULE.kind,
        "metadata": metadata,
        "spec": {"groups": groups},
    }


def render_network_policy(owner: Owner, spec: ModelDeploymentSpec) -> Manifest | None:
    """An ingress-only NetworkPolicy: this namespace plus the allowed ones may reach the server."""
    if not spec.network_policy.enabled:
        return None
    peers = [NetworkPolicyPeer(podSelector=LabelSelector())]
    peers += [
        NetworkPolicyPeer(
            namespaceSelector=LabelSelector(matchLabels={"kubernetes.io/metadata.name": namespace})
        )
        for namespace in spec.network_policy.allowed_namespaces
    ]
    policy = NetworkPolicySpec(
        podSelector=LabelSelector(matchLabels=selector_labels(owner.name)),
        policyTypes=["Ingress"],
        ingress=[
            NetworkPolicyIngressRule(
                from_=peers,
                ports=[NetworkPolicyPort(port=server_contract.PORT_NAME, protocol="TCP")],
            )
        ],
    )
    return _manifest("networking.k8s.io/v1", "NetworkPolicy", _metadata(owner), policy)


def render(owner: Owner, spec: ModelDeploymentSpec, options: RenderOptions) -> Rendered:
    """Every child the ModelDeployment should have, plus the configuration they resolve to."""
    size_gib, size_source = model_size(spec.model)
    placement = place_model(spec.model, spec.image, spec.image_pull_policy, size_gib)
    budget = startup_budget_seconds(spec, size_gib)
    children: list[Manifest] = [
        render_deployment(owner, spec, placement, budget),
        render_service(owner, spec),
    ]
    autoscaler, plan = render_autoscaler(owner, spec, options)
    optional = (
        autoscaler,
        render_disruption_budget(owner, spec),
        render_network_policy(owner, spec),
        render_service_monitor(owner, spec) if spec.monitoring.service_monitor else None,
        render_prometheus_rule(owner, spec, options),
    )
    children += [child for child in optional if child is not None]
    children, skipped = _installed_only(children, options.installed_crds)
    autoscaler_range = None
    if spec.autoscaling is not None and not spec.suspend:
        autoscaler_range = f"{spec.autoscaling.min_replicas}-{spec.autoscaling.max_replicas}"
    resolved = ResolvedConfig(
        image=spec.image,
        gpu=ResolvedGPU(type=spec.accelerator.type, count=spec.accelerator.count),
        model_path=placement.model_path,
        model_size_gi_b=size_gib,
        model_size_source=size_source,
        startup_probe_budget_seconds=budget,
        termination_grace_period_seconds=server_contract.termination_grace_seconds(
            spec.server.drain_timeout_seconds
        ),
        desired_replicas=desired_replicas(spec),
        autoscaler=autoscaler_range,
        actuator=None if plan is None else plan.actuator,
        scale_up_period_seconds=None if plan is None else plan.windows.scale_up_period_seconds,
        scale_down_stabilization_seconds=(
            None if plan is None else plan.windows.scale_down_stabilization_seconds
        ),
        children=[f"{child['kind']}/{child['metadata']['name']}" for child in children],
    )
    return Rendered(children=children, resolved=resolved, skipped=skipped, autoscaler=plan)


def _installed_only(
    children: list[Manifest], installed_crds: frozenset[str]
) -> tuple[list[Manifest], tuple[ChildKind, ...]]:
    """The children whose kind the cluster serves, and the kinds left out because their CRD is
    not installed: the one place an add-on's absence is handled."""
    kept, skipped = [], []
    for child in children:
        kind = kind_of(child)
        if kind.crd is None or kind.crd in installed_crds:
            kept.append(child)
        elif kind not in skipped:
            skipped.append(kind)
    return kept, tuple(skipped)

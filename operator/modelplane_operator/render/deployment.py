"""The Deployment running the server pods: container, probes, resources, scheduling and rollout."""

from __future__ import annotations

import math
from typing import cast

from lightkube.models.apps_v1 import DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment
from lightkube.models.core_v1 import (
    Affinity,
    ConfigMapKeySelector,
    Container,
    ContainerPort,
    EnvVar,
    EnvVarSource,
    HTTPGetAction,
    KeyToPath,
    Lifecycle,
    LifecycleHandler,
    PodAffinityTerm,
    PodAntiAffinity,
    PodSecurityContext,
    PodSpec,
    PodTemplateSpec,
    Probe,
    ResourceRequirements,
    SeccompProfile,
    SecretKeySelector,
    SecretVolumeSource,
    SleepAction,
    Toleration,
    Volume,
    VolumeMount,
    WeightedPodAffinityTerm,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta

from modelplane_operator import server_contract
from modelplane_operator.models import ModelDeploymentSpec
from modelplane_operator.names import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    STABLE,
    VARIANT_LABEL,
    Variant,
    child_labels,
    deployment_name,
    instance_labels,
    variant_labels,
)
from modelplane_operator.render.model import (
    DOWNLOAD_SECONDS_PER_GIB,
    STARTUP_PROBE_PERIOD_SECONDS,
    ModelPlacement,
)
from modelplane_operator.render.objects import (
    Manifest,
    Owner,
    container_security,
    manifest,
    metadata,
)

SERVER_CONTAINER = "server"
API_KEYS_VOLUME = "api-keys"
API_KEYS_DIRECTORY = "/etc/modelplane/api-keys"
API_KEY_FILE = f"{API_KEYS_DIRECTORY}/{API_KEYS_VOLUME}"
# Owner and group read only: the pod's fsGroup (1000) gives the server user the group.
API_KEYS_FILE_MODE = 0o440


# Deployment progress deadline on top of the startup budget: scheduling, image pull and (for hf://)
# the download in the init container, which the startup probe does not cover.
PROGRESS_MARGIN_SECONDS = 300


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


def _api_keys(spec: ModelDeploymentSpec) -> tuple[list[Volume], list[VolumeMount]]:
    """The key file's volume and mount: only the named key of the Secret, under a fixed name, so
    the flag's path never depends on what the key is called. Not optional: without its Secret
    the pod waits (FailedMount) rather than serving /v1 to anyone."""
    keys = spec.server.api_keys
    if keys is None:
        return [], []
    volume = Volume(
        name=API_KEYS_VOLUME,
        secret=SecretVolumeSource(
            secretName=keys.secret_name,
            items=[KeyToPath(key=keys.key, path=API_KEYS_VOLUME)],
            defaultMode=API_KEYS_FILE_MODE,
        ),
    )
    mount = VolumeMount(name=API_KEYS_VOLUME, mountPath=API_KEYS_DIRECTORY, readOnly=True)
    return [volume], [mount]


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
                        labelSelector=LabelSelector(matchLabels=instance_labels(name)),
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
    owner: Owner,
    spec: ModelDeploymentSpec,
    placement: ModelPlacement,
    startup_budget: int,
    *,
    variant: Variant = STABLE,
    replicas: int | None = None,
    surge: bool = True,
) -> Manifest:
    """The Deployment running one variant's server pods; `replicas` overrides the spec's (the
    canary's, or stable's while it lends GPUs)."""
    gpus = spec.accelerator.count
    args = server_contract.ServerArgs(
        model=placement.model_path,
        served_model_name=spec.model.served_model_name or owner.name,
        gguf_file=spec.model.gguf_file or None,
        dtype=spec.model.dtype,
        device="cuda" if gpus > 0 else "cpu",
        max_batch_size=spec.server.max_batch_size,
        max_batch_tokens=spec.server.max_batch_tokens,
        max_prefill_tokens=spec.server.max_prefill_tokens,
        prefix_cache_tokens=spec.server.prefix_cache_tokens,
        max_wait_ms=spec.server.max_wait_ms,
        max_queue=spec.server.max_queue,
        drain_timeout_seconds=spec.server.drain_timeout_seconds,
        api_key_file=API_KEY_FILE if spec.server.api_keys is not None else None,
        extra_args=tuple(spec.server.extra_args),
    )
    requests: dict[str, str] = {
        "cpu": str(spec.accelerator.cpu),
        "memory": str(spec.accelerator.memory),
    }
    limits: dict[str, str] = {"memory": str(spec.accelerator.memory)}
    key_volumes, key_mounts = _api_keys(spec)
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
        securityContext=container_security(),
        volumeMounts=[*placement.mounts, *key_mounts] or None,
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
    pod_labels = {
        **spec.pod_template.labels,
        **child_labels(owner.name),
        VARIANT_LABEL: variant,
    }
    pod = PodSpec(
        containers=[container],
        initContainers=placement.init_containers or None,
        volumes=[*placement.volumes, *key_volumes] or None,
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
        replicas=desired_replicas(spec) if replicas is None else replicas,
        selector=LabelSelector(matchLabels=variant_labels(owner.name, variant)),
        strategy=DeploymentStrategy(
            type="RollingUpdate",
            # Without a free GPU a surge pod would wait Pending: replace in place instead.
            rollingUpdate=RollingUpdateDeployment(
                maxSurge=spec.rollout.max_surge if surge else 0,
                maxUnavailable=spec.rollout.max_unavailable
                if surge
                else max(1, spec.rollout.max_unavailable),
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
    name = deployment_name(owner.name, variant)
    return manifest("apps/v1", "Deployment", metadata(owner, name, variant), deployment)

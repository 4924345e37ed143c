"""Where the weights come from: the server's --model path, the volumes and init container that get
the weights there, the model's size and the startup budget it implies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lightkube.models.core_v1 import (
    Container,
    EmptyDirVolumeSource,
    EnvVar,
    EnvVarSource,
    PersistentVolumeClaimVolumeSource,
    ResourceRequirements,
    SecretKeySelector,
    Volume,
    VolumeMount,
)

from modelplane_operator.models import ModelDeploymentSpec, ModelSource
from modelplane_operator.render.objects import container_security

MODEL_VOLUME = "model"


MODEL_MOUNT = "/models"


HF_TOKEN_KEY = "token"  # noqa: S105 - the name of a Secret key, not a secret


# Startup budget: time to start CUDA, load the weights and warm up. Loading shards spreads over the
# GPUs of one replica, so the per-GiB cost divides by the GPU count.
STARTUP_BASE_SECONDS = 120


STARTUP_SECONDS_PER_GIB = 15


STARTUP_PROBE_PERIOD_SECONDS = 10


DOWNLOAD_SECONDS_PER_GIB = 20


ESTIMATED_MODEL_GIB = 16.0


EMBEDDED_MODEL_GIB = 1.0


@dataclass(frozen=True)
class ModelPlacement:
    """How the weights reach the server: its --model value plus the volumes and init containers."""

    model_path: str
    volumes: list[Volume]
    mounts: list[VolumeMount]
    init_containers: list[Container]
    download_gib: float


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
            securityContext=container_security(),
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

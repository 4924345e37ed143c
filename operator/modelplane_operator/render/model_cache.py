"""A ModelCache's children (pure): its claim (unless it names an existing one) and the download
Job that runs the server image's `modelplane-server download` into it.

The Job's name carries a hash of what it downloads, so a changed source is a new Job (a Job's
template is immutable) and the old one is pruned; the download itself resumes or skips whatever
the claim already holds. Exit codes 3-5 (auth, not found, out of space) fail the Job at once: no
retry can fix them; a network failure (6) gets a new pod, which resumes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lightkube.utils.quantity import parse_quantity

from modelplane_operator import server_contract
from modelplane_operator.model_cache_api import KIND as CACHE_KIND
from modelplane_operator.model_cache_api import ModelCacheSpec
from modelplane_operator.names import cache_labels
from modelplane_operator.render.model import HF_TOKEN_KEY
from modelplane_operator.render.objects import Manifest, Owner, container_security, metadata

CACHE_MOUNT = "/cache"
DOWNLOAD_CONTAINER = "download"
# `modelplane-server download`'s exit codes that no retry can fix: auth, not found, out of space.
PERMANENT_EXIT_CODES = (3, 4, 5)
DOWNLOAD_RETRIES = 4
PROGRESS_LINGER_SECONDS = 10


def claim_name(name: str, spec: ModelCacheSpec) -> str:
    """The claim holding the cache's files."""
    return spec.storage.existing_claim or name


def job_name(name: str, spec: ModelCacheSpec) -> str:
    """`<name>-download-<hash of what it downloads>`."""
    what = spec.model_dump(mode="json", include={"source", "image", "storage"})
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}-download-{digest}"


def _owner(owner: Owner) -> Owner:
    return Owner(name=owner.name, namespace=owner.namespace, uid=owner.uid, kind=CACHE_KIND)


def render_claim(owner: Owner, spec: ModelCacheSpec) -> Manifest | None:
    """The claim, unless the spec names an existing one."""
    if spec.storage.existing_claim is not None:
        return None
    claim: dict[str, Any] = {
        "accessModes": list(spec.storage.access_modes),
        "resources": {"requests": {"storage": str(spec.storage.size)}},
    }
    if spec.storage.storage_class_name is not None:
        claim["storageClassName"] = spec.storage.storage_class_name
    cache = _owner(owner)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(cache, labels=cache_labels(owner.name)).to_dict(),
        "spec": claim,
    }


def _env(spec: ModelCacheSpec) -> list[dict[str, Any]]:
    # The image is offline by default (servers never reach a hub); the download must not be, and
    # sends no telemetry.
    env: list[dict[str, Any]] = [
        {"name": "HF_HUB_OFFLINE", "value": "0"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if spec.source.endpoint is not None:
        env.append({"name": "HF_ENDPOINT", "value": spec.source.endpoint})
    if spec.source.hf_token_secret is not None:
        secret = {"name": spec.source.hf_token_secret, "key": HF_TOKEN_KEY}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": secret}})
    return env


def download_args(spec: ModelCacheSpec) -> list[str]:
    """The download command's arguments."""
    args = ["download", spec.source.uri, CACHE_MOUNT, f"--revision={spec.source.revision}"]
    if spec.source.gguf_file is not None:
        args.append(f"--gguf-file={spec.source.gguf_file}")
    if spec.storage.existing_claim is None:
        capacity = int(parse_quantity(str(spec.storage.size)) or 0)
        args.append(f"--capacity-bytes={capacity}")
    return [
        *args,
        f"--progress-port={server_contract.DOWNLOAD_PROGRESS_PORT}",
        # The operator reads progress every few seconds: the totals and commit must outlive
        # the download long enough to be read.
        f"--progress-linger-seconds={PROGRESS_LINGER_SECONDS}",
    ]


def render_job(owner: Owner, spec: ModelCacheSpec) -> Manifest:
    """The download Job."""
    labels = cache_labels(owner.name)
    container = {
        "name": DOWNLOAD_CONTAINER,
        "image": spec.image,
        "args": download_args(spec),
        "env": _env(spec),
        "ports": [
            {
                "name": "progress",
                "containerPort": server_contract.DOWNLOAD_PROGRESS_PORT,
                "protocol": "TCP",
            }
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": container_security().to_dict(),
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_MOUNT}],
    }
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": "cache",
                "persistentVolumeClaim": {"claimName": claim_name(owner.name, spec)},
            }
        ],
    }
    job = {
        "backoffLimit": DOWNLOAD_RETRIES,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": DOWNLOAD_CONTAINER,
                        "operator": "In",
                        "values": list(PERMANENT_EXIT_CODES),
                    },
                }
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    name = job_name(owner.name, spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(_owner(owner), name, labels=labels).to_dict(),
        "spec": job,
    }


def render_model_cache(owner: Owner, spec: ModelCacheSpec) -> list[Manifest]:
    """Every child of the ModelCache, in apply order."""
    claim = render_claim(owner, spec)
    return [child for child in (claim, render_job(owner, spec)) if child is not None]

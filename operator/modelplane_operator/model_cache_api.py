"""The ModelCache API: a model downloaded once into a PersistentVolumeClaim, shared by every replica
and variant of the ModelDeployments that use it (pydantic, the source of truth for its CRD).

A ModelCache owns a claim (or names an existing one) and a download Job that runs the server
image's `modelplane-server download` into it. Its status says how far the download is, what it
measured (size, the commit the revision resolved to) and, when it fails, why in one reason.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from modelplane_operator.models import (
    GROUP,
    VERSION,
    ApiModel,
    Condition,
    cel_rules,
    quantity_field,
    section,
)
from modelplane_operator.object_names import ObjectName

KIND = "ModelCache"
PLURAL = "modelcaches"
SINGULAR = "modelcache"
SHORT_NAMES = ("mc",)
API_VERSION = f"{GROUP}/{VERSION}"
HF_URI_PATTERN = r"^hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[-A-Za-z0-9_.]+$"
DEFAULT_IMAGE = "ghcr.io/modelplane/modelplane-server:0.1.0"
STORAGE_MESSAGE = "spec.storage: existingClaim and storageClassName cannot both be set"
AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
# The reasons the download command exits with (modelplane-server download), and the cache's own.
DownloadReason = Literal["AuthFailed", "NotFound", "OutOfSpace", "NetworkError"]


class CacheSource(ApiModel):
    """What to download: one revision of a hub repository (all of it, or one GGUF file)."""

    uri: str = Field(
        max_length=2048, pattern=HF_URI_PATTERN, description="The repository: hf://<org>/<repo>."
    )
    revision: str = Field(
        default="main",
        min_length=1,
        max_length=256,
        description="Branch, tag or commit; the commit it resolved to is in status.",
    )
    gguf_file: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^[^/\s]+\.gguf$",
        description="Download only this GGUF file of the repository.",
    )
    hf_token_secret: ObjectName | None = Field(
        default=None,
        description="A Secret in this namespace whose key `token` is the hub token (gated repos).",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="The hub's URL (HF_ENDPOINT: a mirror); default https://huggingface.co.",
    )


def _shared() -> list[AccessMode]:
    return ["ReadWriteMany"]


class CacheStorage(ApiModel):
    """Where the files go: a claim the operator creates, or one that exists."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("!has(self.existingClaim) || !has(self.storageClassName)", STORAGE_MESSAGE)
        )
    )

    size: int | str = quantity_field(
        "Capacity of the claim; a model larger than this fails with OutOfSpace before "
        "anything is fetched.",
        default="20Gi",
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the claim (default: the cluster's).",
    )
    access_modes: list[AccessMode] = Field(
        default_factory=_shared,
        min_length=1,
        max_length=4,
        description=(
            "Access modes of the claim. ReadWriteMany lets replicas on every node mount it; "
            "ReadWriteOnce keeps them on one node."
        ),
    )
    existing_claim: ObjectName | None = Field(
        default=None, description="Use this claim instead of creating one (it is not deleted)."
    )


class ModelCacheSpec(ApiModel):
    """Desired state: a model, downloaded once."""

    source: CacheSource = Field(description="What to download.")
    storage: CacheStorage = section(CacheStorage, "Where the files go.")
    image: str = Field(
        default=DEFAULT_IMAGE,
        min_length=1,
        max_length=1024,
        description="The server image whose `modelplane-server download` fills the claim.",
    )


CachePhase = Literal["Pending", "Downloading", "Ready", "Failed"]


class ModelCacheStatus(ApiModel):
    """Observed state: how far the download is and what it found."""

    observed_generation: int | None = Field(default=None, description="The generation described.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready (False: Pending, Downloading or why it failed)."
    )
    phase: CachePhase | None = Field(
        default=None, description="Pending, Downloading, Ready, Failed."
    )
    progress: str | None = Field(default=None, description="Percent downloaded, for kubectl get.")
    bytes_done: int | None = Field(default=None, description="Bytes downloaded so far.")
    bytes_total: int | None = Field(default=None, description="Bytes of the files to download.")
    size: str | None = Field(default=None, description="The downloaded size, for kubectl get.")
    size_bytes: int | None = Field(default=None, description="The downloaded size in bytes.")
    resolved_revision: str | None = Field(
        default=None, description="The commit the revision resolved to."
    )
    claim_name: str | None = Field(default=None, description="The claim holding the files.")


class ModelCache(ApiModel):
    """A model downloaded once into a claim, shared by ModelDeployments."""

    model_config = ConfigDict(extra="ignore")

    spec: ModelCacheSpec = Field(description="Desired state.")
    status: ModelCacheStatus | None = Field(default=None, description="Observed state.")

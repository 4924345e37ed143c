"""Storage for the local cluster: a provisioner that gives every claim of the `modelplane-local`
StorageClass a PersistentVolume backed by the claim's own host directory.

The local kubelet already runs a pod's `persistentVolumeClaim` volume in
`<state dir>/claims/<namespace>/<claim>` (`podspec.volume_dirs`); this makes the API agree, the way
an external provisioner does, so claims bind and pods that use them schedule:

- at start it creates the StorageClass `modelplane-local` (the default class, `Immediate` binding,
  reclaim policy `Delete`, provisioner `modelplane.io/local-claims`) if it is missing;
- for each unbound claim of that class it creates a PV named `pvc-<claim uid>`, pre-bound to the
  claim (`claimRef` with its uid), with the claim's requested size as capacity, its access modes
  and volume mode, and a `hostPath` of the claim's directory; kube-controller-manager's
  persistentvolume-binder then binds the two, as it does for any external provisioner;
- a PV it provisioned that is `Released` (its claim deleted) is deleted, and its directory removed.

The capacity is bookkeeping only: the directories share the host's disk, so nothing stops a writer
at the claim's size. Whatever must fail on a claim too small checks the size itself (the download
command's `--capacity-bytes`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.core.generic_client import ALL_NS
from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim
from lightkube.types import on_error_retry

log = logging.getLogger("dataplane.volumes")

Object = Mapping[str, Any]
STORAGE_CLASS = "modelplane-local"
PROVISIONER = "modelplane.io/local-claims"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def claim_dir(claims_root: Path, namespace: str, claim: str) -> Path:
    """The host directory of a claim: the same one `podspec.volume_dirs` gives its pods."""
    return claims_root / namespace / claim


def needs_volume(claim: Object) -> bool:
    """True for a claim of our class that has no volume yet and is not being deleted."""
    spec = claim.get("spec") or {}
    return (
        spec.get("storageClassName") == STORAGE_CLASS
        and not spec.get("volumeName")
        and not claim["metadata"].get("deletionTimestamp")
        and (claim.get("status") or {}).get("phase", "Pending") == "Pending"
    )


def volume_for(claim: Object, claims_root: Path) -> dict[str, Any]:
    """The PV for a claim, pre-bound to it."""
    metadata, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{metadata['uid']}",
            "annotations": {PROVISIONED_BY: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": metadata["namespace"],
                "name": metadata["name"],
                "uid": metadata["uid"],
            },
            "hostPath": {
                "path": str(claim_dir(claims_root, metadata["namespace"], metadata["name"])),
                "type": "DirectoryOrCreate",
            },
        },
    }


def released(volume: Object) -> bool:
    """True for a PV this provisioner made whose claim is gone."""
    annotations = volume["metadata"].get("annotations") or {}
    return (
        annotations.get(PROVISIONED_BY) == PROVISIONER
        and (volume.get("status") or {}).get("phase") == "Released"
        and not volume["metadata"].get("deletionTimestamp")
    )


class LocalVolumeProvisioner:
    def __init__(self, client: AsyncClient, claims_root: Path) -> None:
        self.client = client
        self.claims_root = claims_root

    async def run(self) -> None:
        await self._create(storage_class())
        await asyncio.gather(self._provision(), self._reclaim())

    async def _create(self, obj: dict[str, Any]) -> bool:
        try:
            await self.client.create(codecs.from_dict(obj))
        except ApiError as error:
            if error.status.code != 409:  # already there: an earlier event or run made it
                raise
            return False
        return True

    async def _provision(self) -> None:
        async for _, claim in self.client.watch(
            PersistentVolumeClaim, namespace=ALL_NS, on_error=on_error_retry
        ):
            content = claim.to_dict()
            if not needs_volume(content):
                continue
            volume = volume_for(content, self.claims_root)  # the kubelet makes the directory
            if await self._create(volume):
                log.info(
                    "provisioned %s for claim %s/%s (%s)",
                    volume["metadata"]["name"],
                    content["metadata"]["namespace"],
                    content["metadata"]["name"],
                    volume["spec"]["capacity"]["storage"],
                )

    async def _reclaim(self) -> None:
        async for _, volume in self.client.watch(PersistentVolume, on_error=on_error_retry):
            content = volume.to_dict()
            if not released(content):
                continue
            path = Path(content["spec"]["hostPath"]["path"])
            try:
                await self.client.delete(PersistentVolume, content["metadata"]["name"])
            except ApiError as error:
                if error.status.code != 404:
                    raise
            if path.is_relative_to(self.claims_root):  # never remove what we did not make
                await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
            log.info("deleted %s and %s (its claim is gone)", content["metadata"]["name"], path)

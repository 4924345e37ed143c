"""The local provisioner's PVs: pre-bound to their claim, sized and shaped like it, backed by the
directory the kubelet gives the claim's pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dataplane.podspec import PodLayout, volume_dirs
from dataplane.volumes import (
    PROVISIONED_BY,
    PROVISIONER,
    STORAGE_CLASS,
    needs_volume,
    released,
    storage_class,
    volume_for,
)

CLAIMS = Path("/state/claims")


def claim(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "smollm2", "namespace": "team", "uid": "u-7"},
        "spec": {
            "storageClassName": STORAGE_CLASS,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}},
            **spec,
        },
    }


def test_the_volume_is_the_claims_directory_with_its_size_and_modes() -> None:
    volume = volume_for(claim(accessModes=["ReadOnlyMany", "ReadWriteOnce"]), CLAIMS)
    assert volume["metadata"] == {"name": "pvc-u-7", "annotations": {PROVISIONED_BY: PROVISIONER}}
    spec = volume["spec"]
    assert spec["capacity"] == {"storage": "2Gi"}
    assert spec["accessModes"] == ["ReadOnlyMany", "ReadWriteOnce"]
    assert spec["storageClassName"] == STORAGE_CLASS
    assert spec["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": "team",
        "name": "smollm2",
        "uid": "u-7",
    }
    pod = {
        "metadata": {"name": "p", "namespace": "team"},
        "spec": {"volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "smollm2"}}]},
    }
    layout = PodLayout(pod_dir=Path("/state/pods/p"), claims_root=CLAIMS, bin_dir=Path("/bin"))
    assert spec["hostPath"]["path"] == str(volume_dirs(pod, layout)["c"])


def test_only_pending_unbound_claims_of_our_class_need_a_volume() -> None:
    assert needs_volume(claim())
    assert not needs_volume(claim(storageClassName="fast-ssd"))
    assert not needs_volume(claim(volumeName="pvc-u-7"))
    assert not needs_volume({**claim(), "status": {"phase": "Bound"}})
    deleting = claim()
    deleting["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    assert not needs_volume(deleting)


def test_only_our_released_volumes_are_reclaimed() -> None:
    ours = {**volume_for(claim(), CLAIMS), "status": {"phase": "Released"}}
    assert released(ours)
    assert not released({**ours, "status": {"phase": "Bound"}})
    assert not released({**ours, "metadata": {"name": "pv-by-hand"}})


def test_the_class_is_the_default_and_binds_at_once() -> None:
    cls = storage_class()
    assert cls["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert (cls["provisioner"], cls["volumeBindingMode"]) == (PROVISIONER, "Immediate")

"""The local kubelet keeps status level-based: conditions another writer changed are rewritten."""

from __future__ import annotations

from typing import Any

from dataplane.kubelet import conditions_overwritten

WRITTEN = {
    "conditions": [
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": "True"},
        {"type": "Ready", "status": "True"},
    ]
}


def pod(**statuses: str) -> dict[str, Any]:
    conditions = [{"type": kind, "status": status} for kind, status in statuses.items()]
    return {"status": {"conditions": conditions}}


def test_our_own_conditions_coming_back_are_not_an_overwrite() -> None:
    live = pod(PodScheduled="True", Initialized="True", ContainersReady="True", Ready="True")
    assert not conditions_overwritten(live, WRITTEN)


def test_a_pod_marked_not_ready_by_someone_else_is_an_overwrite() -> None:
    # What the node lifecycle controller does to the pods of a node whose heartbeats stopped.
    live = pod(Initialized="True", ContainersReady="True", Ready="False")
    assert conditions_overwritten(live, WRITTEN)


def test_a_condition_we_wrote_missing_from_the_live_pod_is_an_overwrite() -> None:
    assert conditions_overwritten(pod(Initialized="True"), WRITTEN)
    assert conditions_overwritten({"status": {}}, WRITTEN)

"""The write-skipping comparison that makes a converged reconcile write nothing (no cluster)."""

from __future__ import annotations

from modelplane_operator.kube import HASH_ANNOTATION, is_subset, needs_apply, with_hash


def test_subset_ignores_server_defaults() -> None:
    desired = {"spec": {"ports": [{"name": "http", "port": 80}]}}
    live = {"spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "clusterIP": "x"}}
    assert is_subset(desired, live)


def test_subset_detects_changed_and_missing_fields() -> None:
    assert not is_subset({"spec": {"replicas": 2}}, {"spec": {"replicas": 3}})
    assert not is_subset({"spec": {"ports": [{"port": 80}]}}, {"spec": {"ports": []}})
    assert not is_subset({"spec": {"a": {"b": 1}}}, {"spec": {}})


def test_subset_treats_equal_quantities_as_equal() -> None:
    assert is_subset({"cpu": "1000m"}, {"cpu": "1"})
    assert is_subset({"memory": "1Gi"}, {"memory": "1073741824"})
    assert not is_subset({"cpu": "2"}, {"cpu": "1"})
    assert not is_subset({"name": "http"}, {"name": "https"})


def test_empty_desired_collections_match_absent_fields() -> None:
    assert is_subset({"spec": {"podSelector": {}}}, {"spec": {}})
    assert is_subset({"spec": {"items": []}}, {"spec": {}})


def test_hash_catches_fields_we_stopped_sending() -> None:
    before = with_hash({"metadata": {"name": "x"}, "spec": {"replicas": 2}})
    after = with_hash({"metadata": {"name": "x"}, "spec": {}})
    assert (
        before["metadata"]["annotations"][HASH_ANNOTATION]
        != (after["metadata"]["annotations"][HASH_ANNOTATION])
    )
    # Live still carries the old field and the old hash: the subset check alone would say "equal".
    assert needs_apply(after, before)
    assert not needs_apply(before, before)
    assert needs_apply(before, None)

"""A pod's spec as host processes: which pods run locally, and every substitution."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from dataplane.podspec import (
    SERVER_IMAGE_JQ,
    PodConfigError,
    PodLayout,
    container_env,
    container_port,
    plan_container,
    runs_locally,
    secret_volume_files,
    termination_message,
)

LAYOUT = PodLayout(
    pod_dir=Path("/state/pods/p"), claims_root=Path("/state/claims"), bin_dir=Path("/venv/bin")
)


def no_lookup(kind: str, namespace: str, name: str, key: str) -> str | None:
    return None


def pod(containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "md-abc", "namespace": "team", "uid": "u-1"},
        "spec": {"containers": containers, "nodeName": "gpu-h100-0", **spec},
        "status": {"podIP": "10.244.128.7"},
    }


SERVER = {
    "name": "server",
    "image": "ghcr.io/modelplane/modelplane-server:0.1.0",
    "args": ["--port=8000", "--model=/models/org/name", "--device=cuda"],
    "ports": [{"name": "http", "containerPort": 8000}],
    "volumeMounts": [{"name": "model", "mountPath": "/models", "readOnly": True}],
}
VOLUMES = [{"name": "model", "emptyDir": {}}]


@pytest.mark.parametrize(
    ("image", "ours"),
    [
        ("ghcr.io/modelplane/modelplane-server:0.1.0", True),
        ("modelplane-server", True),
        ("registry.local:5000/x/modelplane-server@sha256:" + "a" * 64, True),
        ("ghcr.io/modelplane/modelplane-server-fork:1", False),
        ("ghcr.io/modelplane/operator:0.1.0", False),
        ("nginx", False),
    ],
)
def test_only_pods_of_the_server_image_run_locally(image: str, ours: bool) -> None:
    assert runs_locally(pod([{"name": "c", "image": image}])) is ours


def test_a_pod_with_a_foreign_sidecar_stays_with_kwok() -> None:
    containers = [SERVER, {"name": "proxy", "image": "envoyproxy/envoy:v1"}]
    assert not runs_locally(pod(containers, volumes=VOLUMES))


def test_the_jq_rule_is_the_python_rule() -> None:
    """kwok's selector and the kubelet must agree; both are built from one pattern."""
    pattern = re.search(r'test\("(.*)"\)', SERVER_IMAGE_JQ)
    assert pattern is not None
    assert "\\" not in pattern.group(1)  # no escapes that jq and Python would read differently
    assert re.compile(pattern.group(1)).search("ghcr.io/modelplane/modelplane-server:0.1.0")


def test_the_server_gets_the_pod_ip_cpu_and_host_paths(tmp_path: Path) -> None:
    # The image's entry point comes from the venv's bin when it is there.
    (tmp_path / "modelplane-server").touch()
    layout = PodLayout(pod_dir=LAYOUT.pod_dir, claims_root=LAYOUT.claims_root, bin_dir=tmp_path)
    plan = plan_container(pod([SERVER], volumes=VOLUMES), SERVER, layout, no_lookup)
    assert plan.argv == (
        str(tmp_path / "modelplane-server"),
        "--port=8000",
        "--model=/state/pods/p/volumes/model/org/name",
        "--device=cpu",
        "--host=10.244.128.7",
    )
    assert plan.env["OMP_NUM_THREADS"] == "1"
    assert plan.env["HF_HUB_OFFLINE"] == "1"
    assert any("--device=cuda -> --device=cpu" in s for s in plan.substitutions)
    assert any("/models -> /state/pods/p/volumes/model" in s for s in plan.substitutions)


def test_a_pvc_maps_to_a_per_claim_directory_and_subpaths_apply() -> None:
    container = {
        **SERVER,
        "volumeMounts": [{"name": "cache", "mountPath": "/models", "subPath": "hf"}],
    }
    volumes = [{"name": "cache", "persistentVolumeClaim": {"claimName": "weights"}}]
    plan = plan_container(pod([container], volumes=volumes), container, LAYOUT, no_lookup)
    assert "--model=/state/claims/team/weights/hf/org/name" in plan.argv


def test_a_secret_volume_is_a_per_pod_directory_of_its_items() -> None:
    container = {
        **SERVER,
        "args": [*SERVER["args"], "--api-key-file=/etc/keys/api-keys"],
        "volumeMounts": [{"name": "keys", "mountPath": "/etc/keys", "readOnly": True}],
    }
    volumes = [
        {
            "name": "keys",
            "secret": {"secretName": "s", "items": [{"key": "k", "path": "api-keys"}]},
        }
    ]
    plan = plan_container(pod([container], volumes=volumes), container, LAYOUT, no_lookup)
    assert "--api-key-file=/state/pods/p/volumes/keys/api-keys" in plan.argv
    values = {("Secret", "team", "s", "k"): "sk-1 tenant=a"}
    files = secret_volume_files(pod([container], volumes=volumes), lambda *key: values.get(key))
    assert files == {"keys": {"api-keys": "sk-1 tenant=a"}}
    with pytest.raises(PodConfigError, match='secret "s" key "k" not found \\(volume keys\\)'):
        secret_volume_files(pod([container], volumes=volumes), no_lookup)
    optional = [{**volumes[0], "secret": {**volumes[0]["secret"], "optional": True}}]
    assert secret_volume_files(pod([container], volumes=optional), no_lookup) == {"keys": {}}


def test_the_embedded_model_download_links_the_wheel() -> None:
    init = {
        "name": "model-download",
        "image": "ghcr.io/modelplane/modelplane-server:0.1.0",
        "command": [
            "hf",
            "download",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "--local-dir",
            "/models/HuggingFaceTB/SmolLM2-135M-Instruct",
        ],
        "volumeMounts": [{"name": "model", "mountPath": "/models"}],
    }
    plan = plan_container(
        pod([SERVER], volumes=VOLUMES, initContainers=[init]), init, LAYOUT, no_lookup
    )
    assert plan.argv[1:] == (
        "-m",
        "dataplane.embedded",
        "smollm2",
        "/state/pods/p/volumes/model/HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    assert "--host" not in " ".join(plan.argv)


def test_other_downloads_run_the_real_hf_cli_offline() -> None:
    init = {
        "name": "model-download",
        "image": "modelplane-server",
        "command": ["hf", "download", "Qwen/Qwen2.5-7B-Instruct", "--local-dir", "/models/q"],
        "volumeMounts": [{"name": "model", "mountPath": "/models"}],
    }
    plan = plan_container(
        pod([SERVER], volumes=VOLUMES, initContainers=[init]), init, LAYOUT, no_lookup
    )
    assert Path(plan.argv[0]).name == "hf"
    assert plan.argv[2:] == (
        "Qwen/Qwen2.5-7B-Instruct",
        "--local-dir",
        "/state/pods/p/volumes/model/q",
    )
    assert plan.env["HF_HUB_OFFLINE"] == "1"


def test_the_download_subcommand_runs_as_written_with_the_claim_mapped() -> None:
    job = {
        "name": "download",
        "image": "modelplane-server",
        "args": ["download", "hf://org/repo", "/cache", "--capacity-bytes=1000"],
        "env": [{"name": "HF_HUB_OFFLINE", "value": "0"}],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    }
    volumes = [{"name": "cache", "persistentVolumeClaim": {"claimName": "smollm2"}}]
    plan = plan_container(pod([job], volumes=volumes), job, LAYOUT, no_lookup)
    assert plan.argv == (
        "modelplane-server",
        "download",
        "hf://org/repo",
        "/state/claims/team/smollm2",
        "--capacity-bytes=1000",
    )
    assert plan.env["HF_HUB_OFFLINE"] == "0"  # the container's env wins over the image's


def test_a_download_serving_its_progress_does_so_on_the_pod_address() -> None:
    job = {
        "name": "download",
        "image": "modelplane-server",
        "args": ["download", "hf://org/repo", "/cache", "--progress-port=8090"],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    }
    volumes = [{"name": "cache", "persistentVolumeClaim": {"claimName": "smollm2"}}]
    plan = plan_container(pod([job], volumes=volumes), job, LAYOUT, no_lookup)
    assert plan.argv[-2:] == ("--progress-port=8090", "--progress-host=10.244.128.7")
    assert "--host" not in " ".join(plan.argv[:-1])


def test_a_failed_container_falls_back_to_its_last_log_lines() -> None:
    fallback = {"name": "c", "terminationMessagePolicy": "FallbackToLogsOnError"}
    output = b"".join(b"progress %d\n" % i for i in range(200)) + b"NotFound: no such repo\n"
    message = termination_message(fallback, 4, output)
    assert message.splitlines()[-1] == "NotFound: no such repo"
    assert len(message.splitlines()) == 80
    assert termination_message(fallback, 4, b"x" * 5000) == "x" * 2048
    assert termination_message(fallback, 0, output) == ""  # only on failure
    assert termination_message({"name": "c"}, 4, output) == ""  # File policy: no file here


def test_env_resolves_field_refs_and_secrets_and_reports_missing_ones() -> None:
    container = {
        **SERVER,
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "t", "key": "k", "optional": True}},
            },
            {"name": "OMP_NUM_THREADS", "value": "2"},
        ],
    }
    values = {("Secret", "team", "s", "k"): "hunter2"}
    env = container_env(pod([container]), container, lambda *key: values.get(key))
    assert env == {"POD_IP": "10.244.128.7", "KEY": "hunter2", "OMP_NUM_THREADS": "2"}
    plan = plan_container(
        pod([container], volumes=VOLUMES), container, LAYOUT, lambda *key: values.get(key)
    )
    assert plan.env["OMP_NUM_THREADS"] == "2"  # the container's own value wins
    with pytest.raises(PodConfigError, match='secret "s" key "k" not found'):
        container_env(pod([container]), container, no_lookup)


def test_unsupported_volumes_are_a_config_error_naming_the_volume() -> None:
    volumes = [{"name": "model", "configMap": {"name": "x"}}]
    with pytest.raises(PodConfigError, match="volume 'model' \\(configMap\\)"):
        plan_container(pod([SERVER], volumes=volumes), SERVER, LAYOUT, no_lookup)


def test_probe_ports_resolve_by_name_or_number() -> None:
    assert container_port(SERVER, "http") == 8000
    assert container_port(SERVER, 9000) == 9000
    with pytest.raises(PodConfigError, match="no port named 'metrics'"):
        container_port(SERVER, "metrics")

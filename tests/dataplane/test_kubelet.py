"""The local kubelet keeps status level-based (conditions another writer changed are rewritten)
and runs Job pods to completion: exit codes to Succeeded/Failed, restarts for OnFailure, and the
FallbackToLogsOnError message, and writes Secret volumes as the kubelet does."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dataplane.kubelet import KubeletConfig, LocalKubelet, PodRunner, conditions_overwritten

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


class StatusRecorder:
    """The API client as far as a pod runner uses it: status patches are kept, events dropped."""

    def __init__(self, secrets: dict[str, dict[str, str]] | None = None) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.secrets = secrets or {}  # name -> data (base64), as the API returns them

    async def get(self, resource: Any, name: str, **_: Any) -> Any:
        return SimpleNamespace(data=self.secrets[name])

    async def patch(self, resource: Any, name: str, body: dict[str, Any], **_: Any) -> None:
        self.statuses.append(body["status"])

    async def create(self, obj: Any) -> None:
        pass


def job_pod(script: str, restart_policy: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "download-abc", "namespace": "team", "uid": "u-9"},
        "spec": {
            "restartPolicy": restart_policy,
            "containers": [
                {
                    "name": "download",
                    "image": "modelplane-server",
                    "command": ["sh", "-c", script],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
        "status": {"podIP": "10.244.128.9"},
    }


async def run_to_the_end(
    tmp_path: Path, pod: dict[str, Any], client: StatusRecorder | None = None
) -> tuple[StatusRecorder, dict[str, Any]]:
    client = client or StatusRecorder()
    config = KubeletConfig(state_dir=tmp_path, bin_dir=tmp_path / "bin", backoff_base_s=0.1)
    kubelet = LocalKubelet(client, config)  # type: ignore[arg-type]
    runner = PodRunner(kubelet, pod)
    runner.update(pod)
    await asyncio.wait_for(runner.tasks[0], 30)
    await asyncio.sleep(0.1)  # the status writer's last patch
    runner.tasks[1].cancel()
    await kubelet.http.aclose()
    return client, client.statuses[-1]


async def test_a_failed_job_pod_is_failed_with_its_last_log_line_as_message(
    tmp_path: Path,
) -> None:
    script = 'echo "progress 10/20 bytes"; echo "NotFound: no repo org/x" >&2; exit 4'
    _, status = await run_to_the_end(tmp_path, job_pod(script, "Never"))
    assert status["phase"] == "Failed"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (4, "Error")
    assert terminated["message"].splitlines()[-1] == "NotFound: no repo org/x"


async def test_an_on_failure_job_pod_restarts_until_it_succeeds(tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    script = (
        f'[ -e {marker} ] && echo done && exit 0; touch {marker}; echo "NetworkError: x"; exit 6'
    )
    client, status = await run_to_the_end(tmp_path, job_pod(script, "OnFailure"))
    assert status["phase"] == "Succeeded"
    container = status["containerStatuses"][0]
    assert container["restartCount"] == 1
    assert container["lastState"]["terminated"]["exitCode"] == 6
    assert container["lastState"]["terminated"]["message"] == "NetworkError: x\n"
    assert "message" not in container["state"]["terminated"]  # success: no message
    assert all(s["phase"] != "Failed" for s in client.statuses)  # OnFailure: never Failed


async def test_a_secret_volume_item_keeps_its_bytes_its_mode_and_its_subdirectory(
    tmp_path: Path,
) -> None:
    secret = b"\xffsk-1 tenant=a\n"  # not UTF-8: a Secret's data is bytes
    expected = tmp_path / "expected"
    expected.write_bytes(secret)
    script = f'test "$(stat -c %a "$KEYS")" = 400 && cmp "$KEYS" {expected}'
    pod = job_pod(script, "Never")
    pod["spec"]["volumes"] = [
        {
            "name": "keys",
            "secret": {
                "secretName": "s",
                "items": [{"key": "k", "path": "nested/api-keys", "mode": 0o400}],
            },
        }
    ]
    container = pod["spec"]["containers"][0]
    container["volumeMounts"] = [{"name": "keys", "mountPath": "/etc/keys", "readOnly": True}]
    container["env"] = [{"name": "KEYS", "value": "/etc/keys/nested/api-keys"}]
    client = StatusRecorder({"s": {"k": base64.b64encode(secret).decode()}})
    _, status = await run_to_the_end(tmp_path, pod, client)
    assert status["phase"] == "Succeeded", status

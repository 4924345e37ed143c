"""End to end on the real data plane: a ModelDeployment's pods are real server processes, Ready
comes from their real probes, requests go through the Gateway (Traefik → the Service's
EndpointSlice → the pod's address → the process), deleting a pod drains it, and a crash loop is a
process that exited.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from dataplanesupport import (
    DIRECT,
    DataPlane,
    apply,
    gateway_client,
    http_route,
    model_deployment,
    pods,
    ready_condition,
    route_host,
    wait_answer,
    wait_ready,
)

from testsupport import argocd_health, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.dataplane]


def startup_probe(plane: DataPlane, pod: dict[str, Any]) -> int | None:
    """What the pod's server answers on /health/startup right now (None: nothing listens yet)."""
    ip = pod.get("status", {}).get("podIP")
    if not ip:
        return None
    try:
        with DIRECT.open(f"http://{ip}:8000/health/startup", timeout=2) as response:
            return int(response.status)
    except OSError as error:
        return int(getattr(error, "code", 0)) or None


def test_embedded_model_is_ready_only_after_its_startup_probe_and_answers_through_the_gateway(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str
) -> None:
    apply(
        dataplane,
        dp_namespace,
        model_deployment("smollm2", "hf://HuggingFaceTB/SmolLM2-135M-Instruct"),
        http_route("smollm2", "smollm2", route_host(dp_namespace)),
    )
    # While the real server loads, the pod runs with an address, its startup probe fails, and the
    # ModelDeployment is not Ready; Ready never comes before the server's own startup says 200.
    saw_loading = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready = (ready_condition(dataplane, dp_namespace, "smollm2") or {}).get("status")
        current = pods(dataplane, dp_namespace, "smollm2")
        probe = startup_probe(dataplane, current[0]) if current else None
        if ready == "True":
            assert probe == 200, f"Ready while the server's startup probe says {probe}"
            break
        if current and current[0]["status"].get("podIP") and probe != 200:
            saw_loading = True
        time.sleep(0.5)
    else:
        pytest.fail(f"not Ready in 300 s: {ready_condition(dataplane, dp_namespace, 'smollm2')}")
    assert saw_loading, "never saw the pod running with its server still loading"
    pod = pods(dataplane, dp_namespace, "smollm2")[0]
    (status,) = pod["status"]["containerStatuses"]
    assert status["started"] is True
    assert status["ready"] is True
    assert status["containerID"].startswith("local://")
    # What a new replica takes to serve, measured from the pod's start to Ready (the autoscaler's
    # windows derive from it): the real load of SmolLM2, so more than a few seconds.
    assert pod["status"]["startTime"]
    measured = wait_for(
        lambda: dataplane.get("-n", dp_namespace, "modeldeployment", "smollm2")["status"].get(
            "measuredStartupSeconds"
        ),
        timeout=30,
        what="status.measuredStartupSeconds",
    )
    assert 5 <= measured <= 300

    wait_answer(f"{dataplane.gateway}/v1/models", route_host(dp_namespace))
    client = gateway_client(dataplane, route_host(dp_namespace), timeout=120)
    answer = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert "Paris" in (answer.choices[0].message.content or "")

    # Deleting the pod during a streaming request drains it: the stream goes on through the preStop
    # sleep and past the SIGTERM, completes, then the replacement pod (a new process on a new
    # address) takes over. Greedy decoding makes the length of this stream the same every run.
    chunks: list[str] = []
    finish: list[str | None] = []
    first_token = threading.Event()
    ended: list[float] = []

    def stream() -> None:
        response = client.chat.completions.create(
            model="smollm2",
            messages=[
                {"role": "user", "content": "List the numbers from 1 to 300, comma-separated."}
            ],
            max_tokens=200,
            temperature=0,
            stream=True,
        )
        for chunk in response:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks.append(chunk.choices[0].delta.content)
                first_token.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                finish.append(chunk.choices[0].finish_reason)
        ended.append(time.monotonic())

    streaming = threading.Thread(target=stream)
    streaming.start()
    assert first_token.wait(60), "no first token"
    old = pod["metadata"]["name"]
    dataplane.kubectl("delete", "pod", "-n", dp_namespace, old, "--wait=false")
    deleted = time.monotonic()
    streaming.join(timeout=120)
    assert not streaming.is_alive()
    assert finish == ["length"], f"the stream did not complete: {finish} after {len(chunks)} chunks"
    pre_stop = pod["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert ended[0] - deleted > pre_stop + 1, "the stream ended before the server got its SIGTERM"

    def replaced() -> bool:
        live = [p for p in pods(dataplane, dp_namespace, "smollm2") if p["metadata"]["name"] != old]
        return bool(live) and all(
            c["status"] == "True"
            for p in live
            for c in p["status"]["conditions"]
            if c["type"] == "Ready"
        )

    wait_for(replaced, timeout=300, interval=1, what="a Ready replacement pod")
    wait_for(
        lambda: (
            not [
                p for p in pods(dataplane, dp_namespace, "smollm2") if p["metadata"]["name"] == old
            ]
        ),
        timeout=120,
        what="the old pod gone",
    )
    wait_ready(dataplane, dp_namespace, "smollm2")
    again = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert again.choices[0].text
    drained = next((dataplane.kubelet_dir / "pods").glob(f"{dp_namespace}_{old}_*/logs/server.log"))
    assert "draining" in drained.read_text()


def test_a_missing_model_path_is_a_real_crash_loop_with_its_exit_code(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    apply(dataplane, dp_namespace, model_deployment("broken", f"file://{missing}"))

    def crash_looping() -> dict[str, Any] | None:
        obj = dataplane.get("-n", dp_namespace, "modeldeployment", "broken")
        ready = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
        return obj if ready and ready[0].get("reason") == "CrashLoopBackOff" else None

    obj = wait_for(crash_looping, timeout=180, interval=1, what="Ready=False CrashLoopBackOff")
    (condition,) = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    assert condition["status"] == "False"
    # What Argo CD makes of this very status (the chart's health check).
    assert [answer["status"] for answer in argocd_health(obj)] == ["Degraded"]
    assert "last exit code 1" in condition["message"], condition
    (pod,) = pods(dataplane, dp_namespace, "broken")
    (status,) = pod["status"]["containerStatuses"]
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert status["restartCount"] >= 1
    log = next(
        (dataplane.kubelet_dir / "pods").glob(
            f"{dp_namespace}_{pod['metadata']['name']}_*/logs/server.log"
        )
    )
    assert str(missing) in log.read_text()


def test_api_keys_from_a_secret_guard_v1_and_leave_the_probes_open(
    dataplane: DataPlane, dataplane_operator: object, dp_namespace: str
) -> None:
    """spec.server.apiKeys end to end: the Secret's key file reaches the server, which refuses /v1
    without a key and serves a tenant's key, while its unauthenticated probes make it Ready."""
    keys = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "chat-keys"},
        "stringData": {"api-keys": "sk-team-a tenant=team-a share=3\n"},
    }
    keyed = model_deployment(
        "keyed",
        "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
        server={"apiKeys": {"secretName": "chat-keys"}},
    )
    host = route_host(dp_namespace)
    apply(dataplane, dp_namespace, keys, keyed, http_route("keyed", "keyed", host))
    wait_ready(dataplane, dp_namespace, "keyed", timeout=300)
    bearer = {"Authorization": "Bearer sk-team-a"}
    wait_answer(f"{dataplane.gateway}/v1/models", host, headers=bearer)
    with pytest.raises(openai.AuthenticationError):
        gateway_client(dataplane, host, timeout=60).models.list()
    client = gateway_client(dataplane, host, timeout=120, api_key="sk-team-a")
    answer = client.chat.completions.create(
        model="keyed",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
    )
    assert answer.choices[0].message.content

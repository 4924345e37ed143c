"""ModelCache: the claim and download Job it renders, the status its children imply, and how a
ModelDeployment waits for it, mounts it, and keeps serving while it goes away."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fakekube import FakeKube, as_kube
from modelplane_operator.model_cache_api import ModelCacheSpec
from modelplane_operator.model_cache_reconcile import reconcile_cache
from modelplane_operator.model_cache_status import CacheFacts, observe_cache
from modelplane_operator.reconcile import reconcile
from modelplane_operator.render import Owner
from modelplane_operator.render.model_cache import job_name, render_model_cache

SOURCE = {
    "uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
    "ggufFile": "SmolLM2-135M-Instruct.Q4_1.gguf",
}
OWNER = Owner(name="smollm2", namespace="models", uid="cache-uid")


def cache_spec(**fields: Any) -> ModelCacheSpec:
    return ModelCacheSpec.model_validate({"source": SOURCE, **fields})


def cache_body(**fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelCache",
        "metadata": {"name": "smollm2", "namespace": "models", "uid": "cache-uid", "generation": 1},
        "spec": {"source": SOURCE, "storage": {"size": "1Gi"}, **fields},
    }


def test_a_cache_renders_its_claim_and_a_download_job_of_the_server_image() -> None:
    claim, job = render_model_cache(OWNER, cache_spec(storage={"size": "2Gi"}))
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "2Gi"}}
    }  # fmt: skip
    assert claim["metadata"]["ownerReferences"][0]["kind"] == "ModelCache"
    assert claim["metadata"]["labels"]["app.kubernetes.io/name"] == "modelplane-model-cache"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == [
        "download",
        SOURCE["uri"],
        "/cache",
        "--revision=main",
        f"--gguf-file={SOURCE['ggufFile']}",
        f"--capacity-bytes={2 << 30}",
        "--progress-port=8090",
        "--progress-linger-seconds=10",
    ]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env == {"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert (rule["action"], rule["onExitCodes"]["values"]) == ("FailJob", [3, 4, 5])
    # A changed source is a new Job (its template is immutable); the same spec, the same name.
    assert job["metadata"]["name"] == job_name("smollm2", cache_spec(storage={"size": "2Gi"}))
    assert (
        job_name("smollm2", cache_spec(source={**SOURCE, "revision": "v2"}))
        != job["metadata"]["name"]
    )


def test_an_existing_claim_is_used_not_created_and_a_token_comes_from_its_secret() -> None:
    spec = cache_spec(
        storage={"existingClaim": "weights"},
        source={**SOURCE, "hfTokenSecret": "hub", "endpoint": "https://mirror.example"},
    )
    (job,) = render_model_cache(OWNER, spec)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert not any(arg.startswith("--capacity-bytes") for arg in container["args"])
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "weights"
    }
    env = {item["name"]: item for item in container["env"]}
    assert env["HF_ENDPOINT"]["value"] == "https://mirror.example"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hub", "key": "token"}


BOUND = {"status": {"phase": "Bound"}}


def job(state: str | None) -> dict[str, Any]:
    conditions = [{"type": state, "status": "True"}] if state else []
    return {"metadata": {"name": "j"}, "status": {"conditions": conditions}}


def failed_pod(message: str, code: int) -> dict[str, Any]:
    terminated = {"exitCode": code, "message": message}
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-12-07T10:00:00Z"},
        "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": terminated}}]},
    }


@pytest.mark.parametrize(
    ("facts", "phase", "reason", "words"),
    [
        (CacheFacts("c", {"status": {"phase": "Pending"}}, None, [], None),
         "Pending", "ClaimPending", "claim c is not bound"),
        (CacheFacts("c", BOUND, job(None), [],
                    {"phase": "Downloading", "bytesDone": 40 << 20, "bytesTotal": 100 << 20}),
         "Downloading", "Downloading", "40Mi of 100Mi (40%)"),
        (CacheFacts("c", BOUND, job(None), [],
                    {"phase": "Retrying", "bytesDone": 1, "bytesTotal": 2,
                     "reason": "NetworkError", "message": "reset"}),
         "Downloading", "Downloading", "retrying after NetworkError: reset"),
        (CacheFacts("c", BOUND, job("Failed"), [failed_pod("progress 1/2\nNotFound: no repo", 4)],
                    None),
         "Failed", "NotFound", "no repo"),
        (CacheFacts("c", BOUND, job("Failed"), [failed_pod("", 5)], None),
         "Failed", "OutOfSpace", "exit code 5"),
    ],
)  # fmt: skip
def test_status_follows_the_claim_the_job_and_the_download(
    facts: CacheFacts, phase: str, reason: str, words: str
) -> None:
    fields, ready, _ = observe_cache(cache_spec(), facts, None)
    assert fields["phase"] == phase
    assert (ready.status, ready.reason) == ("False", reason)
    assert words in ready.message


def test_a_complete_job_is_ready_with_the_size_and_commit_the_download_reported() -> None:
    progress = {"phase": "Complete", "bytesDone": 5 << 20, "bytesTotal": 5 << 20, "commit": "abc"}
    fields, ready, downloading = observe_cache(
        cache_spec(), CacheFacts("c", BOUND, job("Complete"), [], progress), None
    )
    assert (fields["phase"], fields["progress"], fields["size"]) == ("Ready", "100%", "5Mi")
    assert (fields["sizeBytes"], fields["resolvedRevision"]) == (5 << 20, "abc")
    assert (ready.status, ready.reason) == ("True", "Downloaded")
    assert not downloading


async def test_a_cache_applies_its_children_and_writes_nothing_once_converged() -> None:
    fake = FakeKube({})
    fake.caches[("models", "smollm2")] = cache_body()
    body = fake.caches[("models", "smollm2")]
    await reconcile_cache(as_kube(fake), body)
    assert {kind for kind, _, _ in fake.objects} == {"PersistentVolumeClaim", "Job"}
    assert body["status"]["phase"] == "Pending"  # the claim is not bound yet
    fake.objects[("PersistentVolumeClaim", "models", "smollm2")]["status"] = {"phase": "Bound"}
    outcome = await reconcile_cache(as_kube(fake), body)
    assert body["status"]["phase"] == "Downloading"
    assert outcome.requeue_after == 2.0
    (job_key,) = [key for key in fake.objects if key[0] == "Job"]
    fake.objects[job_key]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    await reconcile_cache(as_kube(fake), body)
    assert body["status"]["phase"] == "Ready"
    fake.writes.clear()
    outcome = await reconcile_cache(as_kube(fake), body)
    assert (fake.writes, outcome.requeue_after) == ([], None)
    # A new revision: a new Job, the old one deleted.
    body["spec"]["source"] = {**SOURCE, "revision": "v2"}
    await reconcile_cache(as_kube(fake), body)
    assert [key[2] for key in fake.objects if key[0] == "Job"] == [
        job_name("smollm2", ModelCacheSpec.model_validate(body["spec"]))
    ]


def md_body(**model: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "models", "uid": "md-uid", "generation": 1},
        "spec": {"model": {**SOURCE, **model}, "replicas": 2},
    }


def ready_cache(size: int = 300 << 20) -> dict[str, Any]:
    body = cache_body()
    body["status"] = {
        "phase": "Ready",
        "claimName": "smollm2",
        "sizeBytes": size,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Downloaded"}],
    }
    return body


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(item for item in body["status"]["conditions"] if item["type"] == kind)


async def test_a_deployment_waits_for_its_cache_then_mounts_it_and_downloads_nothing() -> None:
    fake = FakeKube(md_body(cacheRef="smollm2"))
    downloading = cache_body()
    downloading["status"] = {
        "phase": "Downloading",
        "claimName": "smollm2",
        "conditions": [{"type": "Ready", "status": "False", "reason": "Downloading",
                        "message": "downloading hf://...: 40Mi of 100Mi (40%)"}],
    }  # fmt: skip
    fake.caches[("models", "smollm2")] = downloading
    await reconcile(as_kube(fake), fake.body)
    deployment = fake.objects[("Deployment", "models", "chat")]
    assert deployment["spec"]["replicas"] == 0  # no pod would find its files
    ready = condition(fake.body, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ModelDownloading")
    assert "40Mi of 100Mi (40%)" in ready["message"]
    fake.caches[("models", "smollm2")] = ready_cache()
    await reconcile(as_kube(fake), fake.body)
    deployment = fake.objects[("Deployment", "models", "chat")]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert "initContainers" not in pod  # nothing to download
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "smollm2", "readOnly": True}
    resolved = fake.body["status"]["resolved"]
    assert (resolved["modelCache"], resolved["modelClaim"]) == ("smollm2", "smollm2")
    assert resolved["modelSizeSource"] == "measured"
    assert resolved["modelSizeGiB"] == pytest.approx(300 / 1024, abs=0.001)
    assert condition(fake.body, "ModelCacheReady")["status"] == "True"


async def test_a_ready_cache_of_the_same_source_is_used_without_being_named() -> None:
    fake = FakeKube(md_body())
    fake.caches[("models", "smollm2")] = ready_cache()
    other = copy.deepcopy(ready_cache())
    other["metadata"]["name"] = "other-revision"
    other["spec"]["source"] = {**SOURCE, "revision": "v2"}
    fake.caches[("models", "other-revision")] = other
    await reconcile(as_kube(fake), fake.body)
    assert fake.body["status"]["resolved"]["modelCache"] == "smollm2"
    # A different revision asks for different files: no cache, its own download.
    fake = FakeKube(md_body(revision="v3"))
    fake.caches[("models", "smollm2")] = ready_cache()
    await reconcile(as_kube(fake), fake.body)
    assert "modelCache" not in fake.body["status"]["resolved"]
    pod = fake.objects[("Deployment", "models", "chat")]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["name"] == "model-download"


async def test_a_cache_going_away_leaves_running_pods_on_its_claim_and_says_so() -> None:
    fake = FakeKube(md_body(cacheRef="smollm2"))
    fake.caches[("models", "smollm2")] = ready_cache()
    await reconcile(as_kube(fake), fake.body)
    template = copy.deepcopy(fake.objects[("Deployment", "models", "chat")]["spec"])
    del fake.caches[("models", "smollm2")]
    fake.writes.clear()
    await reconcile(as_kube(fake), fake.body)
    assert "apply Deployment" not in fake.writes  # nothing restarts, nothing scales down
    assert (
        fake.objects[("Deployment", "models", "chat")]["spec"]["replicas"] == template["replicas"]
    )
    going = condition(fake.body, "ModelCacheReady")
    assert (going["status"], going["reason"]) == ("False", "CacheNotFound")
    assert "running pods keep claim smollm2" in going["message"]


async def test_a_canary_of_a_new_revision_uses_its_own_cache_once_ready() -> None:
    body = md_body()
    v2 = {**SOURCE, "revision": "v2"}
    body["spec"]["canary"] = {"model": {**v2, "cacheRef": "smollm2-v2"}, "replicas": 1}
    fake = FakeKube(body)
    fake.caches[("models", "smollm2")] = ready_cache()
    downloading = cache_body(source=v2)
    downloading["metadata"]["name"] = "smollm2-v2"
    downloading["status"] = {"phase": "Downloading", "claimName": "smollm2-v2"}
    fake.caches[("models", "smollm2-v2")] = downloading
    await reconcile(as_kube(fake), fake.body)
    # The canary's cache downloads: no canary pod yet, stable on its own cache.
    assert fake.objects[("Deployment", "models", "chat-canary")]["spec"]["replicas"] == 0
    stable = fake.objects[("Deployment", "models", "chat")]["spec"]["template"]["spec"]
    assert stable["volumes"][0]["persistentVolumeClaim"]["claimName"] == "smollm2"
    ready_v2 = ready_cache()
    ready_v2["metadata"]["name"] = "smollm2-v2"
    ready_v2["spec"]["source"] = v2
    ready_v2["status"]["claimName"] = "smollm2-v2"
    fake.caches[("models", "smollm2-v2")] = ready_v2
    revision = fake.body["status"]["canary"]["revision"]
    await reconcile(as_kube(fake), fake.body)
    canary = fake.objects[("Deployment", "models", "chat-canary")]["spec"]
    assert canary["replicas"] == 1
    volume = canary["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert volume["claimName"] == "smollm2-v2"
    assert fake.body["status"]["canary"]["revision"] == revision  # the same canary, not a new one

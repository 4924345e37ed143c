"""What a ModelCache's status should say (pure): from its claim, its download Job and that Job's
pods, and the progress the running download serves.

Ready is True once the Job completed. Until then: Pending (the claim is not bound, or there is no
Job yet) or Downloading (with bytes done of total, and while retrying the reason). When the Job
failed, the reason is the download's own: the last line of the failed pod's termination message
(`<Reason>: <message>`), else its exit code's meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelplane_operator.conditions import READY, Condition
from modelplane_operator.model_cache_api import ModelCacheSpec, ModelCacheStatus

Object = dict[str, Any]
EXIT_REASONS = {3: "AuthFailed", 4: "NotFound", 5: "OutOfSpace", 6: "NetworkError"}
KNOWN_REASONS = frozenset(EXIT_REASONS.values())
GIB, MIB = 1 << 30, 1 << 20


@dataclass(frozen=True)
class CacheFacts:
    """What one reconcile saw of a ModelCache's children."""

    claim_name: str
    claim: Object | None
    job: Object | None
    pods: list[Object]
    progress: Object | None  # what the running download serves, if it answered


def human_size(size: int) -> str:
    """Bytes as kubectl get shows them: 1.3Gi, 257Mi."""
    return f"{size / GIB:.1f}Gi" if size >= GIB else f"{math.ceil(size / MIB)}Mi"


def _job_condition(job: Object) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def failure_of(pods: list[Object]) -> tuple[str, str]:
    """The reason and message of the last failed download pod."""
    failed = [pod for pod in pods if (pod.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda pod: str(pod["metadata"].get("creationTimestamp", "")))
    for pod in reversed(failed):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            lines = str(terminated.get("message") or "").strip().splitlines()
            last = lines[-1] if lines else ""
            reason, _, message = last.partition(": ")
            if reason in KNOWN_REASONS:
                return reason, message
            code = terminated.get("exitCode")
            if code in EXIT_REASONS:
                return EXIT_REASONS[code], last or f"exit code {code}"
            if code is not None:
                return "DownloadFailed", last or f"exit code {code}"
    return "DownloadFailed", "the download Job failed"


def observe_cache(
    spec: ModelCacheSpec, facts: CacheFacts, previous: ModelCacheStatus | None
) -> tuple[dict[str, Any], Condition, bool]:
    """The status fields, the Ready condition, and whether the download is running (so its
    progress is worth reading again soon)."""
    known = previous or ModelCacheStatus()
    progress = facts.progress or {}
    done = progress.get("bytesDone", known.bytes_done)
    total = progress.get("bytesTotal", known.bytes_total)
    commit = progress.get("commit") or known.resolved_revision
    fields: dict[str, Any] = {
        "claimName": facts.claim_name,
        "bytesDone": done,
        "bytesTotal": total,
        "resolvedRevision": commit,
        "sizeBytes": known.size_bytes,
        "size": known.size,
        "progress": f"{math.floor(100 * done / total)}%" if done is not None and total else None,
    }
    source = spec.source.uri + (f" ({spec.source.gguf_file})" if spec.source.gguf_file else "")
    if facts.claim is None:
        why = f"claim {facts.claim_name} does not exist"
        return (
            {**fields, "phase": "Pending"},
            Condition(READY, "False", "ClaimNotFound", why),
            False,
        )
    if (facts.claim.get("status") or {}).get("phase") != "Bound":
        why = f"claim {facts.claim_name} is not bound yet (its StorageClass provisions it)"
        return {**fields, "phase": "Pending"}, Condition(READY, "False", "ClaimPending", why), False
    if facts.job is None:
        why = "the download Job is being created"
        return {**fields, "phase": "Pending"}, Condition(READY, "False", "Pending", why), False
    state = _job_condition(facts.job)
    if state == "Complete":
        size = total if total is not None else known.size_bytes
        ready = {
            **fields,
            "phase": "Ready",
            "progress": "100%",
            "sizeBytes": size,
            "size": None if size is None else human_size(size),
            "bytesDone": size,
        }
        at = f" at {commit[:12]}" if commit else ""
        words = f"{source}{at}" + ("" if size is None else f", {human_size(size)}")
        return ready, Condition(READY, "True", "Downloaded", words), False
    if state == "Failed":
        reason, message = failure_of(facts.pods)
        return {**fields, "phase": "Failed"}, Condition(READY, "False", reason, message), False
    words = f"downloading {source}"
    if done is not None and total:
        words += f": {human_size(done)} of {human_size(total)} ({fields['progress']})"
    if progress.get("phase") == "Retrying":
        words += f"; retrying after {progress.get('reason')}: {progress.get('message')}"
    downloading = {**fields, "phase": "Downloading"}
    return downloading, Condition(READY, "False", "Downloading", words), True

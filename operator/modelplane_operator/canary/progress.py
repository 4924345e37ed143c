"""The canary's progress, one reconcile at a time (pure: the status and the facts in, the next
status, events and when to look again out).

Phases: Progressing (through the steps; a canary that is not ready yet gets no weight and its
step's clock does not start), Paused (every window Inconclusive: held, then rolled back after
`inconclusiveTimeout` — never a hang), Promoting (stable takes the canary's settings; the canary
keeps serving until stable's rollout is complete), Promoted, RolledBack. The last two are final
for this revision of `spec.canary`; any edit of it starts a new canary, and removing it removes
the canary at once (a `git revert` rolls back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from modelplane_operator.models import Canary, CanaryDecision, CanaryStatus, CheckResult
from modelplane_operator.slo_rules import duration_seconds

HISTORY_LENGTH = 10
FINAL_PHASES = ("Promoted", "RolledBack")
Event = tuple[str, str, str]  # type, reason, message


@dataclass(frozen=True)
class Window:
    """One analysis window's checks and their overall verdict."""

    results: list[CheckResult]
    verdict: str


@dataclass(frozen=True)
class Facts:
    """What reconcile saw: the time, whether the canary's pods are all ready, whether stable's
    rollout to the canary's settings is complete, and the window it just ran, if any."""

    now: str
    canary_ready: bool
    stable_promoted: bool = False
    window: Window | None = None


@dataclass
class Decision:
    """The next status, the events to post, and when to reconcile again (None: on a change)."""

    status: CanaryStatus
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def seconds(timestamp: str) -> float:
    """An RFC 3339 timestamp (second precision, UTC) in seconds since the epoch."""
    return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def start(revision: str, canary: Canary, now: str) -> CanaryStatus:
    """A new canary: its first step, not started until its pods are ready."""
    return CanaryStatus(
        revision=revision,
        phase="Progressing",
        steps=len(canary.steps),
        history=[CanaryDecision(time=now, decision="Started", message=f"revision {revision}")],
    )


def target_weight(canary: Canary, status: CanaryStatus) -> int:
    """The weight the canary should get now, when ready (0 once promoted or rolled back)."""
    if status.phase in FINAL_PHASES:
        return 0
    if not canary.steps:
        return canary.traffic.weight
    return canary.steps[min(status.step, len(canary.steps) - 1)].weight


def analysis_due(canary: Canary, status: CanaryStatus, now: str, routed_weight: int) -> bool:
    """Whether a window should run now: the canary has weight, a whole interval has passed at
    the current step's weight, and since the last window."""
    if canary.analysis is None or status.phase not in ("Progressing", "Paused"):
        return False
    if routed_weight <= 0 or status.step_started_at is None:
        return False
    interval = duration_seconds(canary.analysis.interval)
    elapsed = seconds(now) - seconds(status.step_started_at)
    since = (
        None if status.last_analysis_at is None else seconds(now) - seconds(status.last_analysis_at)
    )
    return elapsed >= interval and (since is None or since >= interval)


def _record(status: CanaryStatus, now: str, decision: str, message: str) -> CanaryStatus:
    entry = CanaryDecision(time=now, decision=decision, message=message)
    return status.model_copy(update={"history": [*status.history, entry][-HISTORY_LENGTH:]})


def _failing(results: list[CheckResult], verdict: str) -> str:
    picked = [result for result in results if result.verdict == verdict]
    return "; ".join(
        f"{result.name}: {result.message} (canary {result.canary_samples} requests, stable "
        f"{result.stable_samples})"
        for result in picked
    )


def _roll_back(decision: Decision, now: str, message: str) -> None:
    status = decision.status.model_copy(update={"phase": "RolledBack"})
    decision.status = _record(status, now, "RolledBack", message)
    decision.events.append(("Warning", "CanaryRolledBack", message))


def _judge_window(canary: Canary, decision: Decision, window: Window, now: str) -> None:
    assert canary.analysis is not None  # a window runs only with an analysis
    status = decision.status.model_copy(
        update={"last_analysis_at": now, "analysis": list(window.results)}
    )
    decision.status = status
    if window.verdict == "Fail":
        failures = status.failures + 1
        decision.status = status.model_copy(
            update={"failures": failures, "inconclusive_since": None, "phase": "Progressing"}
        )
        message = _failing(window.results, "Fail")
        if failures > canary.analysis.failure_limit:
            _roll_back(decision, now, f"analysis failed: {message}")
        else:
            decision.status = _record(decision.status, now, "Failed", f"tolerated: {message}")
        return
    if window.verdict == "Inconclusive":
        since = status.inconclusive_since or now
        decision.status = status.model_copy(update={"inconclusive_since": since, "phase": "Paused"})
        if status.phase != "Paused":
            decision.status = _record(
                decision.status, now, "Inconclusive", _failing(window.results, "Inconclusive")
            )
        timeout = duration_seconds(canary.analysis.inconclusive_timeout)
        if seconds(now) - seconds(since) >= timeout:
            message = (
                f"analysis inconclusive for {canary.analysis.inconclusive_timeout}: "
                f"{_failing(window.results, 'Inconclusive')}"
            )
            _roll_back(decision, now, message)
        return
    decision.status = status.model_copy(
        update={"inconclusive_since": None, "phase": "Progressing", "last_pass_at": now}
    )


def _step_done(canary: Canary, status: CanaryStatus, now: str) -> bool:
    step = canary.steps[status.step]
    assert status.step_started_at is not None
    started = seconds(status.step_started_at)
    if step.pause is not None and seconds(now) - started < duration_seconds(step.pause):
        return False
    if step.analysis:
        return status.last_pass_at is not None and seconds(status.last_pass_at) > started
    return True


def _advance_steps(canary: Canary, decision: Decision, now: str) -> None:
    status = decision.status
    while status.phase == "Progressing" and canary.steps and _step_done(canary, status, now):
        following = status.step + 1
        if following >= len(canary.steps):
            status = _record(status, now, "Promoting", "every step passed")
            status = status.model_copy(update={"phase": "Promoting"})
            decision.events.append(("Normal", "CanaryPromoting", "every step passed"))
            break
        weight = canary.steps[following].weight
        status = status.model_copy(update={"step": following, "step_started_at": now})
        status = _record(
            status, now, "Step", f"step {following + 1}/{len(canary.steps)}: {weight}%"
        )
    decision.status = status


def _next_look(canary: Canary, status: CanaryStatus, now: str) -> float | None:
    """Seconds until something time-based can change: a pause ending, the next window, the
    inconclusive timeout."""
    if status.phase not in ("Progressing", "Paused") or status.step_started_at is None:
        return None
    current = seconds(now)
    waits = []
    if canary.steps and status.step < len(canary.steps):
        pause = canary.steps[status.step].pause
        if pause is not None:
            waits.append(seconds(status.step_started_at) + duration_seconds(pause) - current)
    if canary.analysis is not None:
        interval = duration_seconds(canary.analysis.interval)
        last = status.last_analysis_at or status.step_started_at
        waits.append(max(seconds(last), seconds(status.step_started_at)) + interval - current)
    upcoming = [wait for wait in waits if wait > 0]
    return min(upcoming) if upcoming else (1.0 if waits else None)


def advance(canary: Canary, status: CanaryStatus, facts: Facts) -> Decision:
    """The canary's next status given what reconcile saw."""
    decision = Decision(status=status.model_copy(update={"steps": len(canary.steps)}))
    now = facts.now
    if status.phase in FINAL_PHASES:
        return decision
    if status.phase == "Promoting":
        if facts.stable_promoted:
            promoted = decision.status.model_copy(update={"phase": "Promoted"})
            decision.status = _record(
                promoted, now, "Promoted", "stable runs the canary's settings"
            )
            decision.events.append(
                (
                    "Normal",
                    "CanaryPromoted",
                    "stable runs the canary's settings; fold spec.canary into the spec",
                )
            )
        return decision
    if not facts.canary_ready:
        return decision
    if decision.status.step_started_at is None:
        decision.status = decision.status.model_copy(update={"step_started_at": now})
    if facts.window is not None and canary.analysis is not None:
        _judge_window(canary, decision, facts.window, now)
        if decision.status.phase in FINAL_PHASES:
            return decision
    _advance_steps(canary, decision, now)
    decision.requeue_after = _next_look(canary, decision.status, now)
    return decision


def summary(canary: Canary, status: CanaryStatus, routed_weight: int) -> str:
    """The CANARY column: what a glance at `kubectl get md` should tell."""
    if status.phase == "Promoted":
        return "promoted"
    if status.phase == "RolledBack":
        return "rolled back"
    if status.phase == "Promoting":
        return "promoting"
    if status.step_started_at is None:
        return "starting"
    position = f" step {status.step + 1}/{len(canary.steps)}" if canary.steps else ""
    paused = " paused" if status.phase == "Paused" else ""
    return f"{routed_weight}%{position}{paused}"

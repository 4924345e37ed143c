"""The canary's pure parts: variants' specs, the analysis window, and the progress machine."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_operator.canary import analysis, progress, variants
from modelplane_operator.canary.progress import Facts, Window
from modelplane_operator.models import Canary, CanaryCheck, CheckResult, ModelDeploymentSpec

NOW = "2026-12-07T10:00:00Z"


def at(seconds: int) -> str:
    """NOW plus some seconds, as reconcile stamps times."""
    minutes, second = divmod(seconds, 60)
    return f"2026-12-07T10:{minutes:02d}:{second:02d}Z"


def spec(**canary: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://org/model", "servedModelName": "chat"},
            "replicas": 4,
            "server": {"maxQueue": 64, "maxBatchSize": 8},
            "canary": canary,
        }
    )


def canary_of(**fields: Any) -> Canary:
    canary = spec(**fields).canary
    assert canary is not None
    return canary


# --- variants ---------------------------------------------------------------------------------


def test_the_canary_overlays_only_what_it_sets() -> None:
    base = spec(image="server:2", server={"maxQueue": 2}, model={"uri": "hf://org/model-v2"})
    assert base.canary is not None
    merged = variants.canary_spec(base, base.canary)
    assert merged.image == "server:2"
    assert merged.server.max_queue == 2
    assert merged.server.max_batch_size == 8  # stable's, not the default
    assert merged.model.uri == "hf://org/model-v2"
    assert merged.model.served_model_name == "chat"  # one name whichever variant answers
    assert merged.canary is None
    assert merged.replicas == base.replicas


def test_the_canary_cannot_set_other_api_keys() -> None:
    """It serves stable's clients through the same route: other keys would 401 some of them."""
    with pytest.raises(ValueError, match="apiKeys"):
        spec(server={"apiKeys": {"secretName": "other-keys"}})


def test_the_revision_follows_the_canary_not_the_rest_of_the_spec() -> None:
    one, two = canary_of(image="server:2"), canary_of(image="server:3")
    assert variants.revision(one) != variants.revision(two)
    assert variants.revision(one) == variants.revision(canary_of(image="server:2"))


def test_replicas_for_each_way_of_splitting() -> None:
    canary = canary_of()
    assert variants.canary_replicas(canary, stable_replicas=4, weight=20) == 1
    assert variants.canary_replicas(canary, stable_replicas=10, weight=25) == 3
    assert variants.canary_replicas(canary_of(replicas=2), stable_replicas=10, weight=5) == 2
    # By replica ratio, k / (n + k) is as near the weight as whole pods allow.
    assert variants.ratio_replicas(4, 20) == 1
    assert variants.ratio_weight(4, 1) == 20
    assert variants.ratio_replicas(3, 50) == 3
    assert variants.ratio_weight(3, 0) == 0


# --- analysis ---------------------------------------------------------------------------------


def test_built_in_queries_compare_the_same_window_per_variant() -> None:
    check = CanaryCheck(name="errors", metric="ErrorRatio", max_increase=0.01)
    canary = analysis.check_query(check, "models", "chat", "canary", "2m")
    stable = analysis.check_query(check, "models", "chat", "stable", "2m")
    assert canary.replace('variant="canary"', 'variant="stable"') == stable
    assert "[2m]" in canary
    assert 'status=~"5..|429"' in canary
    assert "or vector(0)" in canary
    ttft = CanaryCheck(name="ttft", metric="TimeToFirstTokenP95", max_ratio=1.5)
    assert analysis.check_query(ttft, "models", "chat", "canary", "1m").startswith(
        "histogram_quantile(0.95, sum by (le) (rate(modelplane_time_to_first_token_seconds_bucket{"
    )


def test_custom_queries_get_their_placeholders_filled() -> None:
    check = CanaryCheck(
        name="custom",
        query=(
            'sum(rate(x{namespace="{{namespace}}",md="{{ name }}",variant="{{variant}}"}'
            "[{{window}}]))"
        ),
        max=1,
    )
    query = analysis.check_query(check, "models", "chat", "canary", "5m")
    assert query == 'sum(rate(x{namespace="models",md="chat",variant="canary"}[5m]))'


@pytest.mark.parametrize(
    ("check", "values", "samples", "verdict", "words"),
    [
        (CanaryCheck(name="e", metric="ErrorRatio", max_increase=0.01), (0.005, 0.0),
         analysis.Samples(50, 200), "Pass", "canary 0.005"),
        (CanaryCheck(name="e", metric="ErrorRatio", max_increase=0.01), (0.3, 0.0),
         analysis.Samples(50, 200), "Fail", "exceeds stable 0 by 0.3"),
        (CanaryCheck(name="t", metric="TimeToFirstTokenP95", max_ratio=1.5), (0.9, 0.3),
         analysis.Samples(50, 200), "Fail", "3x stable"),
        (CanaryCheck(name="t", metric="TimeToFirstTokenP95", max=0.5), (0.6, 0.6),
         analysis.Samples(50, 200), "Fail", "above the bound"),
        (CanaryCheck(name="e", metric="ErrorRatio", max_increase=0.01), (0.3, 0.0),
         analysis.Samples(5, 200), "Inconclusive", "too few requests: canary 5"),
        (CanaryCheck(name="t", metric="TimeToFirstTokenP95", max_ratio=1.5), (None, 0.3),
         analysis.Samples(50, 200), "Inconclusive", "no data for canary"),
        (CanaryCheck(name="t", metric="TimeToFirstTokenP95", max_ratio=1.5), (float("nan"), 0.3),
         analysis.Samples(50, 200), "Inconclusive", "no data for canary"),
        (CanaryCheck(name="t", metric="TimeToFirstTokenP95", max_ratio=1.5), (0.9, 0.3),
         analysis.Samples(0, 0, "ConnectError: refused"), "Inconclusive", "Prometheus"),
    ],
)  # fmt: skip
def test_verdicts(
    check: CanaryCheck,
    values: tuple[float | None, float | None],
    samples: analysis.Samples,
    verdict: str,
    words: str,
) -> None:
    result = analysis.judge(analysis.Measured(check, *values), samples, min_samples=20)
    assert result.verdict == verdict
    assert words in result.message
    assert (result.canary_samples, result.stable_samples) == (samples.canary, samples.stable)


def test_a_window_fails_if_any_check_fails_and_is_never_a_pass_without_checks() -> None:
    def result(verdict: str) -> CheckResult:
        return CheckResult(name="c", verdict=verdict)  # type: ignore[arg-type]

    assert analysis.window_verdict([result("Pass"), result("Fail")]) == "Fail"
    assert analysis.window_verdict([result("Pass"), result("Inconclusive")]) == "Inconclusive"
    assert analysis.window_verdict([result("Pass"), result("Pass")]) == "Pass"
    assert analysis.window_verdict([]) == "Inconclusive"


# --- progress ---------------------------------------------------------------------------------

STEPS = [{"weight": 10, "pause": "1m"}, {"weight": 50, "analysis": True}, {"weight": 80}]
ANALYSIS = {"interval": "1m", "failureLimit": 0, "inconclusiveTimeout": "3m"}


def window(verdict: str, message: str = "why") -> Window:
    return Window([CheckResult(name="errors", verdict=verdict, message=message)], verdict)  # type: ignore[arg-type]


def test_steps_advance_after_their_pause_and_passing_analysis_then_promote() -> None:
    canary = canary_of(steps=STEPS, analysis=ANALYSIS)
    status = progress.start("rev1", canary, NOW)
    # Not ready: no clock starts, no weight.
    decision = progress.advance(canary, status, Facts(now=at(30), canary_ready=False))
    assert decision.status.step_started_at is None
    assert progress.summary(canary, decision.status, 0) == "starting"
    decision = progress.advance(canary, decision.status, Facts(now=at(60), canary_ready=True))
    assert (decision.status.step, decision.status.step_started_at) == (0, at(60))
    assert decision.requeue_after == 60
    decision = progress.advance(canary, decision.status, Facts(now=at(119), canary_ready=True))
    assert decision.status.step == 0
    decision = progress.advance(canary, decision.status, Facts(now=at(120), canary_ready=True))
    assert decision.status.step == 1
    assert progress.target_weight(canary, decision.status) == 50
    # Step 2 needs a window that passed at this weight: no window yet, none due for a minute.
    status = decision.status
    assert not progress.analysis_due(canary, status, at(150), routed_weight=50)
    assert progress.analysis_due(canary, status, at(180), routed_weight=50)
    assert not progress.analysis_due(canary, status, at(180), routed_weight=0)
    decision = progress.advance(
        canary, status, Facts(now=at(180), canary_ready=True, window=window("Pass"))
    )
    # The last step has neither pause nor analysis: straight on to promotion.
    assert decision.status.phase == "Promoting"
    assert ("Normal", "CanaryPromoting", "every step passed") in decision.events
    assert progress.target_weight(canary, decision.status) == 80
    decision = progress.advance(canary, decision.status, Facts(now=at(200), canary_ready=True))
    assert decision.status.phase == "Promoting"
    decision = progress.advance(
        canary, decision.status, Facts(now=at(240), canary_ready=True, stable_promoted=True)
    )
    assert decision.status.phase == "Promoted"
    assert progress.target_weight(canary, decision.status) == 0
    assert [entry.decision for entry in decision.status.history] == [
        "Started", "Step", "Step", "Promoting", "Promoted"
    ]  # fmt: skip


def test_a_failed_window_beyond_the_limit_rolls_back_with_the_check_in_the_event() -> None:
    canary = canary_of(steps=STEPS, analysis={**ANALYSIS, "failureLimit": 1})
    status = progress.advance(canary, progress.start("r", canary, NOW), Facts(at(0), True)).status
    failed = window("Fail", "canary 0.3 exceeds stable 0 by 0.3")
    decision = progress.advance(canary, status, Facts(at(60), True, window=failed))
    assert decision.status.phase == "Progressing"
    assert decision.status.failures == 1
    decision = progress.advance(canary, decision.status, Facts(at(120), True, window=failed))
    assert decision.status.phase == "RolledBack"
    assert progress.target_weight(canary, decision.status) == 0
    kind, reason, message = decision.events[-1]
    assert (kind, reason) == ("Warning", "CanaryRolledBack")
    assert "errors: canary 0.3 exceeds stable 0 by 0.3" in message
    # Final: nothing changes it until spec.canary does.
    later = progress.advance(canary, decision.status, Facts(at(600), True, window=window("Pass")))
    assert later.status == decision.status
    assert progress.summary(canary, later.status, 0) == "rolled back"


def test_inconclusive_pauses_then_rolls_back_after_the_timeout_never_hangs() -> None:
    canary = canary_of(steps=STEPS, analysis=ANALYSIS)
    status = progress.advance(canary, progress.start("r", canary, NOW), Facts(at(0), True)).status
    unknown = window("Inconclusive", "Prometheus: ConnectError")
    decision = progress.advance(canary, status, Facts(at(60), True, window=unknown))
    assert decision.status.phase == "Paused"
    assert decision.status.inconclusive_since == at(60)
    # Paused: the step's pause is over but the step does not advance.
    decision = progress.advance(canary, decision.status, Facts(at(120), True, window=unknown))
    assert (decision.status.phase, decision.status.step) == ("Paused", 0)
    assert progress.summary(canary, decision.status, 10) == "10% step 1/3 paused"
    # A pass resumes it.
    resumed = progress.advance(canary, decision.status, Facts(at(180), True, window=window("Pass")))
    assert resumed.status.phase == "Progressing"
    assert resumed.status.inconclusive_since is None
    decision = progress.advance(canary, decision.status, Facts(at(240), True, window=unknown))
    assert decision.status.phase == "RolledBack"
    assert "inconclusive for 3m: errors: Prometheus: ConnectError" in decision.events[-1][2]


def test_without_steps_the_canary_holds_at_its_weight() -> None:
    canary = canary_of(traffic={"weight": 30})
    decision = progress.advance(canary, progress.start("r", canary, NOW), Facts(at(0), True))
    decision = progress.advance(canary, decision.status, Facts(at(3000), True))
    assert decision.status.phase == "Progressing"
    assert progress.target_weight(canary, decision.status) == 30
    assert progress.summary(canary, decision.status, 30) == "30%"
    assert decision.requeue_after is None

"""One analysis window: the PromQL of each check for each variant, and the verdicts (pure).

Every check compares the canary with stable **over the same window** (the server's own series,
labelled by the variant) and optionally with an absolute bound. A window with fewer than
`minSamples` requests on either side, no data, or no answer from Prometheus is Inconclusive:
never a pass, never a failure. Reconcile runs the queries (`prometheus.py`) and hands the
numbers back here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelplane_operator import server_contract
from modelplane_operator.models import DEFAULT_CHECKS, CanaryAnalysis, CanaryCheck, CheckResult
from modelplane_operator.names import CANARY, STABLE, Variant

_HISTOGRAMS = {
    "TimeToFirstTokenP95": server_contract.TTFT_HISTOGRAM,
    "InterTokenLatencyP95": server_contract.ITL_HISTOGRAM,
    "QueueWaitP95": server_contract.QUEUE_TIME_HISTOGRAM,
}


def _selector(namespace: str, name: str, variant: Variant, extra: str = "") -> str:
    return f'namespace="{namespace}",modeldeployment="{name}",variant="{variant}"{extra}'


def _api(namespace: str, name: str, variant: Variant) -> str:
    route = f',route=~"{server_contract.OPENAI_BASE_PATH}/.*"'
    return _selector(namespace, name, variant, route)


def samples_query(namespace: str, name: str, variant: Variant, window: str) -> str:
    """API requests the variant answered in the window: the samples every check rests on."""
    metric = server_contract.HTTP_REQUESTS_METRIC
    return f"sum(increase({metric}{{{_api(namespace, name, variant)}}}[{window}]))"


def check_query(
    check: CanaryCheck, namespace: str, name: str, variant: Variant, window: str
) -> str:
    """The PromQL giving the check's value for one variant over the window."""
    if check.query is not None:
        replacements = {"variant": variant, "namespace": namespace, "name": name, "window": window}
        query = check.query
        for key, value in replacements.items():
            query = query.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
        return query
    if check.metric == "ErrorRatio":
        metric = server_contract.HTTP_REQUESTS_METRIC
        api = _api(namespace, name, variant)
        bad = f'{api},status=~"{server_contract.UNAVAILABLE_STATUS_PATTERN}"'
        # No failed request is no series at all: `or vector(0)` makes it a 0.
        return (
            f"(sum(rate({metric}{{{bad}}}[{window}])) or vector(0)) / "
            f"sum(rate({metric}{{{api}}}[{window}]))"
        )
    histogram = _HISTOGRAMS[str(check.metric)]
    selector = _selector(namespace, name, variant)
    return (
        f"histogram_quantile(0.95, sum by (le) (rate({histogram}_bucket{{{selector}}}[{window}])))"
    )


def checks_of(analysis: CanaryAnalysis) -> tuple[CanaryCheck, ...]:
    """The checks a window runs: the spec's, or the defaults."""
    return tuple(analysis.checks) or DEFAULT_CHECKS


@dataclass(frozen=True)
class Measured:
    """One check's numbers for both variants (None: no data, or Prometheus did not answer)."""

    check: CanaryCheck
    canary: float | None
    stable: float | None


@dataclass(frozen=True)
class Samples:
    """Requests each variant served in the window; `error` when Prometheus did not answer."""

    canary: int
    stable: int
    error: str | None = None


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def judge(measured: Measured, samples: Samples, min_samples: int) -> CheckResult:
    """The verdict of one check in one window."""
    check = measured.check
    value, baseline = _number(measured.canary), _number(measured.stable)
    result = CheckResult(
        name=check.name,
        verdict="Inconclusive",
        value=None if value is None else round(value, 6),
        baseline=None if baseline is None else round(baseline, 6),
        canary_samples=samples.canary,
        stable_samples=samples.stable,
    )
    if samples.error is not None:
        return result.model_copy(update={"message": f"Prometheus: {samples.error}"})
    if min(samples.canary, samples.stable) < min_samples:
        message = (
            f"too few requests: canary {samples.canary}, stable {samples.stable}, "
            f"{min_samples} needed on each side"
        )
        return result.model_copy(update={"message": message})
    if value is None or baseline is None:
        side = "canary" if value is None else "stable"
        return result.model_copy(update={"message": f"no data for {side}"})
    failure = _bound_exceeded(check, value, baseline)
    if failure is not None:
        return result.model_copy(update={"verdict": "Fail", "message": failure})
    return result.model_copy(
        update={"verdict": "Pass", "message": f"canary {value:.4g}, stable {baseline:.4g}"}
    )


def _bound_exceeded(check: CanaryCheck, value: float, baseline: float) -> str | None:
    if check.max is not None and value > check.max:
        return f"canary {value:.4g} is above the bound {check.max:.4g}"
    if check.max_increase is not None and value - baseline > check.max_increase:
        return (
            f"canary {value:.4g} exceeds stable {baseline:.4g} by {value - baseline:.4g}, "
            f"more than {check.max_increase:.4g}"
        )
    if check.max_ratio is not None:
        if baseline <= 0:
            if value > 0:
                return f"canary {value:.4g} where stable has 0"
        elif value / baseline > check.max_ratio:
            return (
                f"canary {value:.4g} is {value / baseline:.3g}x stable {baseline:.4g}, more "
                f"than {check.max_ratio:.4g}x"
            )
    return None


def window_verdict(results: list[CheckResult]) -> str:
    """Fail if any check failed; else Inconclusive if any was; else Pass."""
    verdicts = {result.verdict for result in results}
    if "Fail" in verdicts:
        return "Fail"
    if "Inconclusive" in verdicts or not results:
        return "Inconclusive"
    return "Pass"


VARIANTS: tuple[Variant, Variant] = (CANARY, STABLE)

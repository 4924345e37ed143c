"""SLO alerting as Prometheus rules: `spec.slo` in, one rule group out (pure, no I/O).

The method is the SRE workbook's multi-window, multi-burn-rate alerting (chapter 5, "Alerting on
SLOs"): an alert fires when the error budget burns `factor` times faster than the SLO allows over a
long window *and* over a short one (the short window makes it resolve soon after the burn stops).

Rules, per objective (label `slo`: availability, ttft, e2e):
- two recording rules from the server's own series over the base window (the shortest window in
  use): requests per second and bad requests per second, summed over the ModelDeployment's pods;
- for every other window, the error ratio chained from those two with `avg_over_time` (the mean of
  a rate over W is the rate over W, so a 3-day window costs one range over a 5-minute series, not
  a 3-day `rate` over raw counters);
- the error budget left over the SLO window, for dashboards;
- one alert per (long, short) window pair, with labels severity (critical: page, warning: ticket),
  slo, long, short and the spec's routing labels; no alert while the long window holds fewer than
  `minRequests` requests (a handful of failures at 3 a.m. is not an outage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prometheus_client.utils import floatToGoString

from modelplane_operator import server_contract
from modelplane_operator.models import SLO, BurnRateAlert

RECORD_PREFIX = "modelplane:slo"
ALERT_NAME = "ModelDeploymentErrorBudgetBurn"
SEVERITY = {"page": "critical", "ticket": "warning"}
# The SRE workbook's windows and factors for a 30-day SLO (table 5-8).
WORKBOOK_ALERTS: tuple[BurnRateAlert, ...] = (
    BurnRateAlert(severity="page", factor=14.4, long_window="1h", short_window="5m"),
    BurnRateAlert(severity="page", factor=6, long_window="6h", short_window="30m"),
    BurnRateAlert(severity="ticket", factor=3, long_window="1d", short_window="2h"),
    BurnRateAlert(severity="ticket", factor=1, long_window="3d", short_window="6h"),
)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")


def duration_seconds(duration: str) -> float:
    """A Prometheus duration ("1h30m") in seconds."""
    return sum(
        int(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(duration)
    )


@dataclass(frozen=True)
class Indicator:
    """One SLI: its label value, objective (percent good) and the PromQL of bad and all
    requests per second over a window, for one ModelDeployment's series."""

    slo: str
    objective: float
    description: str
    requests: str
    bad: str


def _selector(namespace: str, name: str, extra: str = "") -> str:
    return f'namespace="{namespace}",modeldeployment="{name}"{extra}'


def _sum_rate(metric: str, selector: str) -> str:
    return f"sum by (namespace, modeldeployment) (rate({metric}{{{selector}}}[WINDOW]))"


def indicators(slo: SLO, namespace: str, name: str) -> list[Indicator]:
    """The SLIs `spec.slo` asks for; their PromQL has the placeholder WINDOW for the range."""
    found = []
    if slo.availability is not None:
        api = _selector(namespace, name, f',route=~"{server_contract.OPENAI_BASE_PATH}/.*"')
        found.append(
            Indicator(
                slo="availability",
                objective=slo.availability.objective,
                description="API requests answered without a server error or a 429",
                requests=_sum_rate(server_contract.HTTP_REQUESTS_METRIC, api),
                bad=_sum_rate(
                    server_contract.HTTP_REQUESTS_METRIC,
                    f'{api},status=~"{server_contract.UNAVAILABLE_STATUS_PATTERN}"',
                ),
            )
        )
    latencies = (
        ("ttft", slo.time_to_first_token, server_contract.TTFT_HISTOGRAM, "first token"),
        ("e2e", slo.end_to_end_latency, server_contract.E2E_HISTOGRAM, "last token"),
    )
    for label, objective, histogram, what in latencies:
        if objective is None:
            continue
        le: str = floatToGoString(objective.threshold_seconds)  # type: ignore[no-untyped-call]
        selector = _selector(namespace, name)
        requests = _sum_rate(f"{histogram}_count", selector)
        fast = _sum_rate(f"{histogram}_bucket", f'{selector},le="{le}"')
        found.append(
            Indicator(
                slo=label,
                objective=objective.objective,
                description=f"generation requests with the {what} within {le} s",
                requests=requests,
                bad=f"({requests}) - ({fast})",
            )
        )
    return found


def _record(name: str, window: str) -> str:
    return f"{RECORD_PREFIX}_{name}:rate{window}"


def _labels(indicator: Indicator, namespace: str, name: str) -> str:
    return f'{{{_selector(namespace, name)},slo="{indicator.slo}"}}'


def _ratio(window: str, base: str, labels: str) -> str:
    if window == base:
        return f"{_record('errors', base)}{labels} / {_record('requests', base)}{labels}"
    return (
        f"avg_over_time({_record('errors', base)}{labels}[{window}])"
        f" / avg_over_time({_record('requests', base)}{labels}[{window}])"
    )


def render_rule_groups(
    slo: SLO, namespace: str, name: str, alerts: tuple[BurnRateAlert, ...]
) -> list[dict[str, Any]]:
    """The Prometheus rule group (as PrometheusRule's spec.groups) for one ModelDeployment."""
    windows = {window for alert in alerts for window in (alert.long_window, alert.short_window)}
    base = min(windows, key=duration_seconds)
    rules: list[dict[str, Any]] = []
    for indicator in indicators(slo, namespace, name):
        labels = _labels(indicator, namespace, name)
        rules += [
            {
                "record": _record("requests", base),
                "expr": indicator.requests.replace("WINDOW", base),
                "labels": {"slo": indicator.slo},
            },
            {
                "record": _record("errors", base),
                "expr": indicator.bad.replace("WINDOW", base),
                "labels": {"slo": indicator.slo},
            },
        ]
        rules += [
            {
                "record": _record("error_ratio", window),
                "expr": _ratio(window, base, labels),
                "labels": {"slo": indicator.slo},
            }
            for window in sorted(windows, key=duration_seconds)
        ]
        budget = 1 - indicator.objective / 100
        rules.append(
            {
                "record": f"{RECORD_PREFIX}_error_budget_remaining:ratio",
                "expr": f"1 - ({_ratio(slo.window, base, labels)}) / {budget:g}",
                "labels": {"slo": indicator.slo},
            }
        )
        rules += [_alert(indicator, alert, base, labels, slo) for alert in alerts]
    return [{"name": f"modelplane.slo.{namespace}.{name}", "rules": rules}]


def _alert(
    indicator: Indicator, alert: BurnRateAlert, base: str, labels: str, slo: SLO
) -> dict[str, Any]:
    budget = 1 - indicator.objective / 100
    threshold = f"{alert.factor * budget:g}"
    long_seconds = f"{duration_seconds(alert.long_window):g}"
    expr = (
        f"{_record('error_ratio', alert.long_window)}{labels} > {threshold}\n"
        f"and {_record('error_ratio', alert.short_window)}{labels} > {threshold}\n"
        f"and avg_over_time({_record('requests', base)}{labels}[{alert.long_window}])"
        f" * {long_seconds} >= {slo.min_requests}"
    )
    annotations = {
        "summary": (
            f"{{{{ $labels.namespace }}}}/{{{{ $labels.modeldeployment }}}} burns its "
            f"{indicator.slo} error budget {alert.factor:g}x too fast"
        ),
        "description": (
            f"SLO: {indicator.objective:g}% of {indicator.description} over {slo.window}. The "
            f"error ratio is {{{{ $value | humanizePercentage }}}} over {alert.long_window} and "
            f"above {alert.factor:g}x the budget ({threshold}) over {alert.short_window} too."
        ),
    }
    if slo.runbook_url:
        annotations["runbook_url"] = slo.runbook_url
    return {
        "alert": ALERT_NAME,
        "expr": expr,
        "labels": {
            **slo.alert_labels,
            "severity": SEVERITY[alert.severity],
            "slo": indicator.slo,
            "long": alert.long_window,
            "short": alert.short_window,
        },
        "annotations": annotations,
    }

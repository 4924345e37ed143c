"""SLO alerting rules, checked by Prometheus' own promtool: every rendered rule is valid
(`promtool check rules`), and `promtool test rules` proves on synthetic series that each burn-rate
alert fires at the burn rates it should, not at lower ones, resolves when its short window clears,
and does not page on a handful of requests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataplanesupport import dataplane_binary
from modelplane_operator.kinds import OPTIONAL_CRDS
from modelplane_operator.models import ModelDeploymentSpec
from modelplane_operator.render import Owner, RenderOptions, render
from modelplane_operator.slo_rules import duration_seconds

OWNER = Owner(name="demo", namespace="models", uid="u")
SERIES = 'namespace="models",modeldeployment="demo",pod="demo-0"'
ALL_PAIRS = (("critical", "1h", "5m"), ("critical", "6h", "30m"), ("warning", "1d", "2h"),
             ("warning", "3d", "6h"))  # fmt: skip


def promtool() -> Path:
    found = dataplane_binary("promtool")
    assert found is not None, "promtool is not built: run hack/build-tools.sh dataplane"
    return found


def rule_groups(slo: dict[str, Any]) -> list[dict[str, Any]]:
    spec = ModelDeploymentSpec.model_validate({"model": {"uri": "hf://o/m"}, "slo": slo})
    options = RenderOptions(installed_crds=frozenset(OPTIONAL_CRDS))
    (rule,) = [c for c in render(OWNER, spec, options).children if c["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool()), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "slo",
    [
        {"availability": {"objective": 99.9}},
        {
            "availability": {"objective": 99.5},
            "timeToFirstToken": {"objective": 99, "thresholdSeconds": 0.5},
            "endToEndLatency": {"objective": 95, "thresholdSeconds": 10},
            "alertLabels": {"team": "ml"},
            "runbookUrl": "https://runbooks.example.com/slo",
            "burnRateAlerts": [
                {"severity": "page", "factor": 10, "longWindow": "90s", "shortWindow": "30s"}
            ],
        },
    ],
)
def test_promtool_accepts_every_rendered_rule(slo: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    groups = rule_groups(slo)
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = run("check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(groups[0]['rules'])} rules found" in result.stdout


def alerts(firing: tuple[tuple[str, str, str], ...], slo: str = "availability") -> list[Any]:
    return [
        {
            "exp_labels": {
                "namespace": "models",
                "modeldeployment": "demo",
                "slo": slo,
                "severity": severity,
                "long": long,
                "short": short,
            }
        }
        for severity, long, short in firing
    ]


def pairs(*longs: str) -> tuple[tuple[str, str, str], ...]:
    return tuple(pair for pair in ALL_PAIRS if pair[1] in longs)


def at(minute: int, firing: tuple[tuple[str, str, str], ...], slo: str = "availability") -> Any:
    return {
        "eval_time": f"{minute}m",
        "alertname": "ModelDeploymentErrorBudgetBurn",
        "exp_alerts": alerts(firing, slo),
    }


def http(status: str, values: str) -> dict[str, str]:
    route = 'route="/v1/chat/completions",method="POST"'
    return {
        "series": f'modelplane_http_requests_total{{{SERIES},{route},status="{status}"}}',
        "values": values,
    }


def run_rule_tests(tmp_path: Path, groups: list[dict[str, Any]], tests: list[Any]) -> None:
    for group in groups:  # annotations are templates promtool checks above; here: expressions
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run("test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_burn_rate_alert_fires_and_resolves_on_its_own_windows(tmp_path: Path) -> None:
    """99% availability (a 1% budget), 100 requests a minute. An outage at 20% errors for 4 h
    fires all four alerts; once it ends each resolves when its short window has cleared: 5 m,
    30 m, 2 h, 6 h."""
    outage = {
        "interval": "1m",
        "input_series": [
            http("200", "0+80x240 19200+100x720"),
            http("500", "0+20x240 4800+0x720"),
            http("429", "0+0x960"),
        ],
        "alert_rule_test": [
            at(30, ALL_PAIRS),
            at(240, ALL_PAIRS),
            at(250, pairs("6h", "1d", "3d")),  # 5 m after: the 1 h/5 m page resolved
            at(280, pairs("1d", "3d")),  # 30 m after: both pages resolved
            at(390, pairs("3d")),  # 2 h after: the 1 d/2 h ticket resolved
            at(630, ()),  # 6 h after: everything resolved
        ],
    }
    run_rule_tests(tmp_path, rule_groups({"availability": {"objective": 99}}), [outage])


@pytest.mark.parametrize(
    ("errors_per_100", "firing"),
    [
        (20, ALL_PAIRS),  # 20x the budget: over 14.4
        (8, pairs("6h", "1d", "3d")),  # 8x: pages at 6x, not at 14.4x
        (4, pairs("1d", "3d")),  # 4x: tickets only
        (2, pairs("3d")),  # 2x: the slow-burn ticket only
        (0, ()),
    ],
)
def test_an_alert_fires_only_at_its_burn_rate(
    errors_per_100: int, firing: tuple[tuple[str, str, str], ...], tmp_path: Path
) -> None:
    """A steady error ratio for 8 h; 429s count as errors (load shed is not availability)."""
    steady = {
        "interval": "1m",
        "input_series": [
            http("200", f"0+{100 - errors_per_100}x480"),
            http("429", f"0+{errors_per_100}x480"),
            http("400", "0+5x480"),  # the client's mistake, not the server's
        ],
        "alert_rule_test": [at(420, firing)],
    }
    # A 400 is a request answered as it should be: it counts as good (the ratios above drop by
    # 5 %, well inside every threshold's margin).
    run_rule_tests(tmp_path, rule_groups({"availability": {"objective": 99}}), [steady])


def test_no_page_on_a_handful_of_requests(tmp_path: Path) -> None:
    """Every request failing, but one request every 10 minutes: 6 an hour is under minRequests
    (100), so nothing pages."""
    sparse = {
        "interval": "10m",
        "input_series": [http("200", "0+0x48"), http("500", "0+1x48")],
        "alert_rule_test": [
            {
                "eval_time": "2h",
                "alertname": "ModelDeploymentErrorBudgetBurn",
                "exp_alerts": [],
            }
        ],
    }
    slo = {
        "availability": {"objective": 99},
        "burnRateAlerts": [
            {"severity": "page", "factor": 14.4, "longWindow": "1h", "shortWindow": "5m"}
        ],
    }
    run_rule_tests(tmp_path, rule_groups(slo), [sparse])


def test_a_latency_slo_fires_on_slow_first_tokens_and_resolves(tmp_path: Path) -> None:
    """TTFT within 0.5 s for 99 % of requests: 30 % slow for 2 h pages; 10 m after it ends the
    1 h/5 m page has resolved."""
    histogram = "modelplane_time_to_first_token_seconds"
    slow = {
        "interval": "1m",
        "input_series": [
            {
                "series": f'{histogram}_bucket{{{SERIES},le="0.5"}}',
                "values": "0+70x120 8400+100x60",
            },
            {"series": f"{histogram}_count{{{SERIES}}}", "values": "0+100x180"},
        ],
        "alert_rule_test": [
            at(120, ALL_PAIRS, slo="ttft"),
            at(130, pairs("6h", "1d", "3d"), slo="ttft"),
        ],
    }
    slo = {"timeToFirstToken": {"objective": 99, "thresholdSeconds": 0.5}}
    run_rule_tests(tmp_path, rule_groups(slo), [slow])


def test_durations() -> None:
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("3d") == 259200
    assert duration_seconds("500ms") == 0.5

"""`modelplane-operator render` and `crd` work without a cluster; `run` reads its settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from modelplane_operator import cli

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


def test_render_prints_every_child(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", "-f", str(SAMPLES / "full.yaml")]) == 0
    kinds = [doc["kind"] for doc in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ]


def test_render_can_assume_the_prometheus_operator(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["render", "-f", str(SAMPLES / "full.yaml"), "--assume-prometheus-operator"]
    assert cli.main(arguments) == 0
    kinds = [doc["kind"] for doc in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds[-2:] == ["ServiceMonitor", "PrometheusRule"]


def test_render_refuses_an_invalid_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: modelplane.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\n"
        "spec: {model: {uri: 'hf://o/m'}, replicas: 1, autoscaling: {maxReplicas: 2, "
        "targetQueueDepth: 1}}\n"
    )
    assert cli.main(["render", "-f", str(bad)]) == 1
    assert "spec.replicas and spec.autoscaling" in capsys.readouterr().err


def test_crd_command_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == "CustomResourceDefinition"


def test_run_takes_the_log_level_from_the_environment_and_verbose_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELPLANE_OPERATOR_LOG_LEVEL", "warning")
    assert cli.run_settings(None, verbose=False).log_level == "warning"
    assert cli.run_settings(None, verbose=True).log_level == "debug"
    monkeypatch.setenv("MODELPLANE_OPERATOR_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError, match="log_level"):
        cli.run_settings(None, verbose=False)

"""The operator's model of the server matches docs/server-contract.md (the server's side tests the
same page against its settings)."""

from __future__ import annotations

import re
from pathlib import Path

from modelplane_operator import server_contract

CONTRACT = (Path(__file__).resolve().parents[2] / "docs" / "server-contract.md").read_text()


def documented_flags() -> set[str]:
    return set(re.findall(r"^\| `(--[a-z0-9-]+)`", CONTRACT, flags=re.MULTILINE))


def test_port_and_health_paths_are_the_documented_ones() -> None:
    assert f"`{server_contract.PORT}`, name `{server_contract.PORT_NAME}`" in CONTRACT
    for path in (
        server_contract.LIVENESS_PATH,
        server_contract.READINESS_PATH,
        server_contract.STARTUP_PATH,
        server_contract.METRICS_PATH,
    ):
        assert f"`GET {path}`" in CONTRACT


def test_every_rendered_flag_is_documented() -> None:
    args = server_contract.container_args(
        server_contract.ServerArgs(model="/models/m", served_model_name="m", gguf_file="m.gguf")
    )
    rendered = {arg.split("=", 1)[0] for arg in args}
    assert rendered <= documented_flags(), rendered - documented_flags()


def test_extra_args_come_last_so_they_win() -> None:
    args = server_contract.container_args(
        server_contract.ServerArgs(
            model="/m", served_model_name="m", extra_args=("--max-batch-size=1",)
        )
    )
    assert args[-1] == "--max-batch-size=1"
    assert "--max-batch-size=32" in args


def test_grace_period_outlasts_pre_stop_and_drain() -> None:
    drain = 30
    grace = server_contract.termination_grace_seconds(drain)
    assert grace > drain + server_contract.PRE_STOP_SLEEP_SECONDS
    assert "`drain_timeout_s + 15`" in CONTRACT


def test_autoscaling_metrics_are_prefixed_and_in_the_contract() -> None:
    for metric in (server_contract.QUEUE_DEPTH_METRIC, server_contract.BATCH_FILL_METRIC):
        assert metric.startswith(server_contract.METRIC_PREFIX)
        assert f"`{metric}`" in CONTRACT

"""The operator's model of the server matches docs/server-contract.md (the server's side tests the
same page against its settings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelplane_operator import server_contract
from modelplane_server.cli import build_parser

CONTRACT = (Path(__file__).resolve().parents[2] / "docs" / "server-contract.md").read_text()


# Every optional field set, so the operator renders every flag it can.
EVERY_FLAG = server_contract.ServerArgs(
    model="/models/m",
    served_model_name="m",
    gguf_file="m.gguf",
    api_key_file="/keys",
    max_prefill_tokens=256,
    prefix_cache_tokens=0,
)


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
    args = server_contract.container_args(EVERY_FLAG)
    rendered = {arg.split("=", 1)[0] for arg in args}
    assert rendered <= documented_flags(), rendered - documented_flags()


def test_extra_args_come_last() -> None:
    args = server_contract.container_args(
        server_contract.ServerArgs(
            model="/m", served_model_name="m", extra_args=("--request-timeout-s=300",)
        )
    )
    assert args[-1] == "--request-timeout-s=300"


def test_every_flag_the_operator_renders_is_owned() -> None:
    args = server_contract.container_args(EVERY_FLAG)
    assert {arg.split("=", 1)[0] for arg in args} == set(server_contract.OWNED_FLAGS)


def test_every_spelling_the_servers_parser_takes_for_an_owned_flag_is_refused() -> None:
    """Both sides: each argument the server's argparse reads as an owned flag (exact, `=value`,
    or a prefix) matches that flag's pattern, and no other server flag is refused."""
    parser = build_parser()
    owned_dests = {
        action.dest: option
        for action in parser._actions  # argparse has no public list of its options
        for option in action.option_strings
        if option in server_contract.OWNED_FLAGS
    }
    patterns = {flag: server_contract.flag_spellings(flag) for flag in server_contract.OWNED_FLAGS}
    for flag in server_contract.OWNED_FLAGS:
        for end in range(3, len(flag) + 1):
            spelling = f"{flag[:end]}=1"
            try:
                parsed = vars(parser.parse_args([spelling]))
            except SystemExit:  # ambiguous prefix: the pod would crash; refusing it is right
                parsed = {}
            for dest in parsed:
                if dest in owned_dests:
                    assert re.match(patterns[owned_dests[dest]], spelling), spelling
            assert re.match(patterns[flag], spelling), spelling
            assert re.match(patterns[flag], flag[:end]), flag[:end]
    others = {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in server_contract.OWNED_FLAGS
    }
    for option in others:
        refused = [flag for flag, pattern in patterns.items() if re.match(pattern, f"{option}=1")]
        assert not refused, (option, refused)


def test_the_server_reads_the_key_file_the_operator_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both sides: the rendered --api-key-file reaches the server's settings, tenants and all."""
    from modelplane_server.cli import parse_settings

    monkeypatch.delenv("MODELPLANE_API_KEY", raising=False)
    key_file = tmp_path / "api-keys"
    key_file.write_text("sk-a tenant=team-a share=3\nsk-b\n")
    args = server_contract.container_args(
        server_contract.ServerArgs(model="/m", served_model_name="m", api_key_file=str(key_file))
    )
    keys = parse_settings(args).api_keys()
    assert {(key.key, key.tenant) for key in keys.keys} == {("sk-a", "team-a"), ("sk-b", "default")}
    assert keys.tenants["team-a"].share == 3


def test_grace_period_outlasts_pre_stop_and_drain() -> None:
    drain = 30
    grace = server_contract.termination_grace_seconds(drain)
    assert grace > drain + server_contract.PRE_STOP_SLEEP_SECONDS
    assert "`drain_timeout_s + 15`" in CONTRACT


def test_autoscaling_metrics_are_prefixed_and_in_the_contract() -> None:
    for metric in (server_contract.QUEUE_DEPTH_METRIC, server_contract.BATCH_FILL_METRIC):
        assert metric.startswith(server_contract.METRIC_PREFIX)
        assert f"`{metric}`" in CONTRACT


def test_the_metrics_the_operator_reads_are_the_servers() -> None:
    """Both sides: every gauge an autoscaler reads and every series the SLO rules read is one
    the server exposes, and the latency histograms' bounds (SLO thresholds) are the server's."""
    from prometheus_client import generate_latest

    from modelplane_server import metrics as server_metrics
    from modelplane_server.engine.contract import EngineStats

    registry = server_metrics.Metrics()
    registry.stats_source = lambda: EngineStats(
        waiting=0, running=0, waiting_prompt_tokens=0, steps_total=0,
        last_step_monotonic=None, max_batch_size=1,
    )  # fmt: skip
    registry.http_requests.labels("/v1/completions", "POST", "200").inc()
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(registry.registry).decode().splitlines()
        if not line.startswith("#")
    }
    read = {
        server_contract.QUEUE_DEPTH_METRIC,
        server_contract.BATCH_FILL_METRIC,
        server_contract.KV_CACHE_USAGE_METRIC,
        server_contract.HTTP_REQUESTS_METRIC,
        f"{server_contract.TTFT_HISTOGRAM}_bucket",
        f"{server_contract.E2E_HISTOGRAM}_bucket",
        f"{server_contract.ITL_HISTOGRAM}_bucket",
        f"{server_contract.QUEUE_TIME_HISTOGRAM}_bucket",
    }
    assert read <= exposed, read - exposed
    assert server_contract.TTFT_BUCKETS == server_metrics.TTFT_BUCKETS
    assert server_contract.E2E_BUCKETS == server_metrics.REQUEST_LATENCY_BUCKETS
    for metric in (
        server_contract.QUEUE_DEPTH_METRIC,
        server_contract.BATCH_FILL_METRIC,
        server_contract.KV_CACHE_USAGE_METRIC,
    ):
        assert f"`{metric}`" in CONTRACT


def test_the_operators_default_limits_are_the_servers() -> None:
    """Both sides: what the operator renders when a spec leaves a limit out (the CRD's defaults and
    `ServerArgs`') is the server's own default, so leaving it out and setting it agree."""
    from modelplane_operator.models import ServerConfig
    from modelplane_server.settings import ServerSettings

    server = {name: field.default for name, field in ServerSettings.model_fields.items()}
    operator = {
        "max_batch_size": server_contract.DEFAULT_MAX_BATCH_SIZE,
        "max_batch_tokens": server_contract.DEFAULT_MAX_BATCH_TOKENS,
        "max_wait_ms": server_contract.DEFAULT_MAX_WAIT_MS,
        "max_queue": server_contract.DEFAULT_MAX_QUEUE,
        "drain_timeout_s": server_contract.DEFAULT_DRAIN_TIMEOUT_SECONDS,
        # Not rendered unless set; the CRD's descriptions name these.
        "max_prefill_tokens": server_contract.DEFAULT_MAX_PREFILL_TOKENS,
        "prefix_cache_tokens": server_contract.DEFAULT_PREFIX_CACHE_TOKENS,
    }
    assert operator == {name: server[name] for name in operator}
    crd = ServerConfig()
    args = server_contract.ServerArgs(model="/m", served_model_name="m")
    for spec in (crd, args):
        assert (
            spec.max_batch_size,
            spec.max_batch_tokens,
            spec.max_wait_ms,
            spec.max_queue,
            spec.drain_timeout_seconds,
        ) == tuple(operator.values())[:5]
    unset = server_contract.container_args(args)
    assert not any(
        arg.startswith(("--max-prefill-tokens", "--prefix-cache-tokens")) for arg in unset
    )
    assert crd.max_prefill_tokens is None
    assert crd.prefix_cache_tokens is None
    described = ServerConfig.model_fields
    assert f"default, {server['max_prefill_tokens']}." in str(
        described["max_prefill_tokens"].description
    )
    assert f"default, {server['prefix_cache_tokens']}." in str(
        described["prefix_cache_tokens"].description
    )


def test_the_download_serves_its_progress_where_the_operator_reads_it() -> None:
    from modelplane_server.progress_server import PROGRESS_PATH

    assert server_contract.DOWNLOAD_PROGRESS_PATH == PROGRESS_PATH
    args = render_model_cache_args()
    assert f"--progress-port={server_contract.DOWNLOAD_PROGRESS_PORT}" in args


def render_model_cache_args() -> list[str]:
    from modelplane_operator.model_cache_api import ModelCacheSpec
    from modelplane_operator.render.model_cache import download_args

    spec = ModelCacheSpec.model_validate({"source": {"uri": "hf://org/repo"}})
    return download_args(spec)

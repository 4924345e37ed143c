"""The load tool (`modelplane-server bench`): its statistics against hand-computed values, and whole
runs against a fake OpenAI endpoint served by uvicorn on 127.0.0.1 in this process. No timing is
asserted beyond ordering; the fake's answers fix every token count, so the totals are exact."""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from modelplane_server import cli
from modelplane_server.loadtest.client import RequestResult, Target
from modelplane_server.loadtest.command import sweep_loads
from modelplane_server.loadtest.run import Load, run_load
from modelplane_server.loadtest.statistics import Slo, distribution, percentile, summarize
from modelplane_server.loadtest.workload import MaxTokens, Prompt, load_prompts, synthetic_prompts

# --- a fake OpenAI-compatible server ------------------------------------------------------------


def _prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(len(str(m["content"]).split()) for m in body["messages"])
    return len(str(body.get("prompt") or body.get("input")).split())


async def _completions(request: Request) -> Response:
    body = await request.json()
    if "reject" in str(body.get("prompt", "")):
        return JSONResponse({"error": {"message": "busy"}}, status_code=429)
    prompt_tokens, completion_tokens = _prompt_tokens(body), int(body["max_tokens"])
    chat = request.url.path.endswith("/chat/completions")
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if not body.get("stream"):
        message = {"message": {"role": "assistant", "content": "x " * completion_tokens}}
        choice = message if chat else {"text": "x " * completion_tokens}
        return JSONResponse({"choices": [{"index": 0, **choice}], "usage": usage})
    include_usage = (body.get("stream_options") or {}).get("include_usage")

    async def events() -> AsyncIterator[str]:
        # A role-only chunk first (as real servers send): it must not count as the first token.
        if chat:
            yield f"data: {json.dumps({'choices': [{'delta': {'role': 'assistant'}}]})}\n\n"
        for _ in range(completion_tokens):
            await asyncio.sleep(0.001)
            choice = {"delta": {"content": "x "}} if chat else {"text": "x "}
            yield f"data: {json.dumps({'choices': [{'index': 0, **choice}]})}\n\n"
        if body["model"] == "no-done":  # transformers serve's way: finish reason, no [DONE]
            last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
            yield f"data: {json.dumps({**last, 'usage': usage})}\n\n"
            return
        if include_usage:
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _embeddings(request: Request) -> Response:
    body = await request.json()
    tokens = _prompt_tokens(body)
    return JSONResponse(
        {
            "data": [{"index": 0, "embedding": [0.6, 0.8]}],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def _models(_request: Request) -> Response:
    return JSONResponse({"data": [{"id": "fake-model", "object": "model"}]})


FAKE_APP = Starlette(
    routes=[
        Route("/v1/completions", _completions, methods=["POST"]),
        Route("/v1/chat/completions", _completions, methods=["POST"]),
        Route("/v1/embeddings", _embeddings, methods=["POST"]),
        Route("/v1/models", _models),
    ]
)


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(FAKE_APP, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


# --- statistics ---------------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_distribution_reports_milliseconds() -> None:
    summary = distribution([0.010, 0.020, 0.030])
    assert summary is not None
    assert summary["mean"] == pytest.approx(20.0)
    assert summary["p50"] == pytest.approx(20.0)
    assert summary["std"] == pytest.approx(math.sqrt(200 / 3))
    assert distribution([]) is None


def _result(**fields: Any) -> RequestResult:
    defaults: dict[str, Any] = {"sent": 0.0, "e2e": 1.0, "status": 200}
    return RequestResult(**{**defaults, **fields})


def test_tpot_excludes_the_first_token_and_needs_two() -> None:
    assert _result(ttft=0.2, completion_tokens=5).tpot == pytest.approx(0.2)
    assert _result(ttft=0.2, completion_tokens=1).tpot is None
    assert _result(ttft=None, completion_tokens=5).tpot is None


def test_summary_counts_tokens_from_usage_errors_by_status_and_goodput() -> None:
    results = [
        _result(e2e=1.0, ttft=0.1, chunk_gaps=(0.1, 0.3), prompt_tokens=10, completion_tokens=3),
        _result(e2e=2.0, ttft=0.9, chunk_gaps=(0.5,), prompt_tokens=20, completion_tokens=2),
        _result(status=429, error="http 429"),
        _result(status=None, error="ConnectError"),
    ]
    summary = summarize(results, duration_s=2.0, slo=Slo.parse(["ttft:500"]), unfinished=1)
    assert (summary["requests"], summary["completed"], summary["failed"]) == (5, 2, 3)
    assert summary["errors"] == {"429": 1, "ConnectError": 1, "unfinished": 1}
    assert (summary["prompt_tokens"], summary["output_tokens"]) == (30, 5)
    assert summary["request_throughput"] == pytest.approx(1.0)
    assert summary["output_throughput"] == pytest.approx(2.5)
    assert summary["total_token_throughput"] == pytest.approx(17.5)
    # ITL pools every gap: 100, 300, 500 ms.
    assert summary["itl_ms"]["mean"] == pytest.approx(300.0)
    assert summary["itl_ms"]["p50"] == pytest.approx(300.0)
    # TPOT per request: (1.0 - 0.1) / 2 = 450 ms and (2.0 - 0.9) / 1 = 1100 ms.
    assert summary["tpot_ms"]["mean"] == pytest.approx(775.0)
    assert summary["e2el_ms"]["p50"] == pytest.approx(1500.0)
    # Only the first request's TTFT (100 ms) is within 500 ms.
    assert summary["goodput"]["requests_meeting_slo"] == 1
    assert summary["goodput"]["request_goodput"] == pytest.approx(0.5)


def test_slo_needs_every_constraint() -> None:
    slo = Slo.parse(["ttft:100", "tpot:50", "e2el:1000"])
    assert slo.met(_result(e2e=0.5, ttft=0.05, completion_tokens=10))
    assert not slo.met(_result(e2e=0.9, ttft=0.05, completion_tokens=10))  # TPOT 94 ms
    assert not slo.met(_result(e2e=1.5, ttft=0.05, completion_tokens=100))  # E2E
    assert not slo.met(_result(error="http 500", status=500))
    with pytest.raises(ValueError, match="goodput"):
        Slo.parse(["latency:5"])


def test_max_tokens_distributions() -> None:
    rng = random.Random(0)  # noqa: S311  # a seeded test
    assert MaxTokens.parse("32").sample(rng) == 32
    uniform = [MaxTokens.parse("4:8").sample(rng) for _ in range(500)]
    assert min(uniform) == 4
    assert max(uniform) == 8
    capped = [MaxTokens.parse("exp:32:128").sample(rng) for _ in range(4000)]
    assert min(capped) >= 1
    assert max(capped) == 128
    assert 27 < sum(capped) / len(capped) < 35  # the cap trims the mean a little
    for bad in ("x", "8:4", "exp:32"):
        with pytest.raises(ValueError, match="max-tokens"):
            MaxTokens.parse(bad)


def test_sweeps_vary_one_knob() -> None:
    assert sweep_loads("1,8,32", "inf") == (
        "concurrency",
        [Load(1), Load(8), Load(32)],
    )
    assert sweep_loads("4", "0.5,2") == ("rate", [Load(4, 0.5), Load(4, 2.0)])
    assert sweep_loads("", "inf") == ("concurrency", [Load(None)])
    with pytest.raises(ValueError, match="not both"):
        sweep_loads("1,2", "1,2")


def test_jsonl_prompts(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '"plain"\n{"prompt": "with limit", "max_tokens": 3}\n\n'
        '{"messages": [{"role": "user", "content": "hi there"}]}\n'
    )
    prompts = load_prompts(path)
    assert [p.text for p in prompts] == ["plain", "with limit", "hi there"]
    assert prompts[1].max_tokens == 3
    assert prompts[2].messages == ({"role": "user", "content": "hi there"},)
    path.write_text("{}\n")
    with pytest.raises(ValueError, match=":1:"):
        load_prompts(path)


# --- runs against the fake server ---------------------------------------------------------------


def _prompts(count: int) -> list[Prompt]:
    return synthetic_prompts(count, (3, 3), seed=1)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_streaming_run_measures_every_request(fake_url: str, endpoint: str) -> None:
    target = Target(fake_url, endpoint, "fake-model", stream=True)  # type: ignore[arg-type]
    summary = await run_load(
        target, _prompts(12), MaxTokens.parse("5"), Load(4), num_requests=12, max_duration_s=60
    )
    assert (summary["completed"], summary["failed"]) == (12, 0)
    assert summary["output_tokens"] == 60  # from usage, 5 per request
    assert summary["prompt_tokens"] == 36
    assert summary["load"] == {"concurrency": 4, "rate": "inf", "ramp_up_s": 0.0}
    # Five content chunks per request: one TTFT and four gaps each.
    assert summary["ttft_ms"] is not None
    assert summary["itl_ms"] is not None
    assert summary["tpot_ms"] is not None
    assert summary["ttft_ms"]["p50"] <= summary["e2el_ms"]["p50"]


@pytest.mark.parametrize(("requires_done", "completed"), [(True, 0), (False, 4)])
async def test_a_stream_without_done_completes_only_when_the_target_allows_it(
    fake_url: str, requires_done: bool, completed: int
) -> None:
    target = Target(fake_url, "chat", "no-done", stream=True, requires_done=requires_done)
    summary = await run_load(
        target, _prompts(4), MaxTokens.parse("3"), Load(2), num_requests=4, max_duration_s=60
    )
    assert summary["completed"] == completed
    assert summary["output_tokens"] == 3 * completed


async def test_a_ramped_closed_loop_starts_its_workers_over_the_ramp(fake_url: str) -> None:
    """Four workers over 0.8 s: the last starts at 0.6 s, so the run lasts at least that long;
    the same requests without a ramp finish far sooner (the fake answers in a few ms)."""
    target = Target(fake_url, "completions", "fake-model", stream=True)
    common = {"num_requests": 4, "max_duration_s": 60}
    burst = await run_load(target, _prompts(4), MaxTokens.parse("2"), Load(4), **common)
    ramped = await run_load(
        target, _prompts(4), MaxTokens.parse("2"), Load(4, ramp_up_s=0.8), **common
    )
    assert (burst["completed"], ramped["completed"]) == (4, 4)
    assert ramped["load"]["ramp_up_s"] == 0.8
    assert ramped["duration_s"] >= 0.6
    assert burst["duration_s"] < 0.5


async def test_non_streaming_poisson_run(fake_url: str) -> None:
    target = Target(fake_url, "completions", "fake-model", stream=False)
    summary = await run_load(
        target,
        _prompts(10),
        MaxTokens.parse("2:6"),
        Load(concurrency=2, rate=200.0),
        num_requests=10,
        max_duration_s=60,
    )
    assert summary["completed"] == 10
    assert 20 <= summary["output_tokens"] <= 60
    assert summary["ttft_ms"] is None
    assert summary["e2el_ms"] is not None
    assert summary["load"] == {"concurrency": 2, "rate": 200.0, "ramp_up_s": 0.0}


async def test_errors_are_counted_by_status(fake_url: str) -> None:
    target = Target(fake_url, "completions", "fake-model", stream=True)
    prompts = [Prompt("please reject me"), Prompt("fine")]
    summary = await run_load(
        target, prompts, MaxTokens.parse("3"), Load(2), num_requests=6, max_duration_s=60
    )
    assert summary["completed"] == 3
    assert summary["errors"] == {"429": 3}


async def test_unreachable_server_is_an_error_not_a_crash() -> None:
    target = Target("http://127.0.0.1:9", "completions", "m", stream=True, timeout_s=5)
    summary = await run_load(
        target, _prompts(2), MaxTokens.parse("2"), Load(1), num_requests=2, max_duration_s=30
    )
    assert summary["completed"] == 0
    assert summary["errors"] == {"ConnectError": 2}


async def test_the_time_cap_cuts_a_run_short(fake_url: str) -> None:
    target = Target(fake_url, "completions", "fake-model", stream=True)
    summary = await run_load(
        target, _prompts(4), MaxTokens.parse("2000"), Load(2), num_requests=4, max_duration_s=0.3
    )
    assert summary["completed"] == 0
    assert summary["errors"] == {"unfinished": 4}


async def test_embeddings_run(fake_url: str) -> None:
    target = Target(fake_url, "embeddings", "fake-model", stream=False)
    summary = await run_load(
        target, _prompts(8), MaxTokens.parse("1"), Load(8), num_requests=8, max_duration_s=60
    )
    assert summary["completed"] == 8
    assert summary["prompt_tokens"] == 24
    assert summary["output_tokens"] == 0


def test_the_command_writes_json_and_a_plot(
    fake_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, plot = tmp_path / "result.json", tmp_path / "sweep.png"
    code = cli.main(
        [
            "bench", "--base-url", fake_url, "--concurrency", "1,4", "--num-requests", "6",
            "--max-tokens", "exp:4:8", "--goodput", "ttft:10000", "--output", str(output),
            "--plot", str(plot), "--label", "fake",
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(output.read_text())
    assert result["label"] == "fake"
    assert result["target"]["model"] == "fake-model"  # discovered from /v1/models
    assert [run["load"]["concurrency"] for run in result["runs"]] == [1, 4]
    assert all(run["completed"] == 6 for run in result["runs"])
    assert all(run["goodput"]["requests_meeting_slo"] == 6 for run in result["runs"])
    assert plot.read_bytes().startswith(b"\x89PNG")
    captured = capsys.readouterr()
    assert "concurrency 4" in captured.out
    assert "6/6" in captured.err  # the progress bar


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--max-tokens", "exp:oops"])
    assert exit_info.value.code == 2
    assert "max-tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--ramp-up-s", "-1"])
    assert exit_info.value.code == 2
    assert "ramp-up-s" in capsys.readouterr().err


def test_bench_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from modelplane_server import cli\n"
        "try:\n    cli.main(['bench', '--help'])\n"
        "except SystemExit:\n    pass\n"
        "import modelplane_server.loadtest.command\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "--concurrency" in completed.stdout


def test_unreachable_base_url_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--base-url", "http://127.0.0.1:9", "--quiet"]) == 1
    assert "cannot reach" in capsys.readouterr().err

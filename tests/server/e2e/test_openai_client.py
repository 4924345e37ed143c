"""The server as a real process with tiny random models, driven by the official `openai` client:
the API, streaming that arrives incrementally, embeddings, auth, overload, disconnects and drain.
One test serves the embedded SmolLM2 and checks that it answers sensibly."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .server_process import ServerProcess, free_port, running_server, server_environment

pytestmark = pytest.mark.slow

API_KEY = "e2e-key"
NO_EOS = {"ignore_eos": True}  # random weights may pick EOS early; these tests want exact lengths


@pytest.fixture(scope="module")
def tiny_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_bert_dir: Path
) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("logs"),
        f"--model={tiny_llama_dir}",
        "--served-model-name=tiny-llama",
        f"--embedding-model={tiny_bert_dir}",
        "--device=cpu",
        "--max-batch-size=4",
        env={"MODELPLANE_API_KEY": API_KEY},
    ) as server:
        yield server


@pytest.fixture
def client(tiny_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=tiny_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60
    ) as client:
        yield client


def test_models_completion_and_chat(client: openai.OpenAI) -> None:
    models = {model.id for model in client.models.list()}
    assert "tiny-llama" in models
    completion = client.completions.create(
        model="tiny-llama", prompt="Hello there", max_tokens=7, temperature=0, extra_body=NO_EOS
    )
    assert completion.choices[0].finish_reason == "length"
    assert isinstance(completion.choices[0].text, str)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7
    assert completion.usage.prompt_tokens > 0
    chat = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=5,
        temperature=0,
        extra_body=NO_EOS,
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 5
    # The chat template wraps the question: more prompt tokens than the bare text.
    assert chat.usage.prompt_tokens > 10


def test_greedy_decoding_is_deterministic(client: openai.OpenAI) -> None:
    def ask() -> str | None:
        return (
            client.completions.create(
                model="tiny-llama",
                prompt="One two",
                max_tokens=12,
                temperature=0,
                extra_body=NO_EOS,
            )
            .choices[0]
            .text
        )

    assert ask() == ask()


def test_streaming_chat_arrives_incrementally(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=64,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_EOS,
    )
    arrivals: list[float] = []
    finish_reasons = []
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                arrivals.append(time.perf_counter() - started)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    total = time.perf_counter() - started
    assert len(arrivals) > 1
    assert finish_reasons == ["length"]
    assert usage is not None
    assert usage.completion_tokens == 64
    # Tokens are sent as they are generated: the first one long before the stream ends.
    assert arrivals[0] < 0.75 * total, (arrivals[0], total)
    assert arrivals[-1] - arrivals[0] > 0


def test_embeddings_and_similarity(client: openai.OpenAI, tiny_server: ServerProcess) -> None:
    [embedding_model] = [
        m.id for m in client.models.list() if (m.model_extra or {}).get("kind") == "embedding"
    ]
    # The openai client asks for base64 and decodes it: this checks our encoding too.
    response = client.embeddings.create(
        input=["a red apple", "a green pear"], model=embedding_model
    )
    vectors = [item.embedding for item in response.data]
    assert len(vectors) == 2
    assert all(len(vector) == 32 for vector in vectors)
    assert all(math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-3) for vector in vectors)
    assert response.usage.prompt_tokens > 4
    floats = client.embeddings.create(
        input="a red apple", model=response.model, encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    similarity = httpx.post(
        tiny_server.url + "/v1/similarity",
        json={"texts": ["a red apple", "a green pear"]},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert similarity.status_code == 200, similarity.text
    expected = sum(x * y for x, y in zip(*vectors, strict=True))
    assert similarity.json()["matrix"][0][1] == pytest.approx(expected, abs=1e-4)


def test_a_wrong_key_is_refused_but_health_is_open(tiny_server: ServerProcess) -> None:
    with (
        openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="wrong", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        stranger.models.list()
    assert refused.value.status_code == 401
    assert tiny_server.get("/health/ready").status_code == 200
    assert "modelplane_num_requests_waiting" in tiny_server.get("/metrics").text


def test_bad_requests_are_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny-llama", prompt="word " * 600, max_tokens=1)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as two:
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "x"}], n=17
        )
    assert two.value.param == "n"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)


def stats(server: ServerProcess) -> dict[str, Any]:
    generation = server.stats()["generation"]
    assert isinstance(generation, dict)
    return generation


def test_a_cancelled_stream_stops_consuming_steps(
    client: openai.OpenAI, tiny_server: ServerProcess
) -> None:
    def timed_request() -> float:
        started = time.perf_counter()
        client.completions.create(
            model="tiny-llama", prompt="Hi", max_tokens=20, temperature=0, extra_body=NO_EOS
        )
        return time.perf_counter() - started

    baseline = timed_request()
    finished_before = tiny_server.stats()["finished_requests"]
    assert isinstance(finished_before, dict)
    stream = client.completions.create(
        model="tiny-llama", prompt="Hi", max_tokens=400, temperature=0, stream=True,
        extra_body=NO_EOS,
    )  # fmt: skip
    received = 0
    for chunk in stream:
        received += len(chunk.choices)
        if received >= 3:
            break
    steps_at_cancel = stats(tiny_server)["steps_total"]
    stream.close()  # the client hangs up
    tiny_server.wait_until(
        "the cancelled request to leave the batch",
        lambda: stats(tiny_server)["running"] == 0 and stats(tiny_server)["waiting"] == 0,
        timeout_s=10,
    )
    after = timed_request()
    steps = stats(tiny_server)["steps_total"]
    finished_after = tiny_server.stats()["finished_requests"]
    assert isinstance(finished_after, dict)
    assert finished_after.get("cancelled", 0) == finished_before.get("cancelled", 0) + 1
    # Far fewer steps than the 400 tokens it asked for: at most a few after the hang-up, plus the
    # 20 of the next request.
    assert steps - steps_at_cancel < 60, (steps_at_cancel, steps)
    assert after < 3 * baseline + 1.0, (baseline, after)


async def test_a_burst_beyond_the_queue_gets_429s_and_the_rest_complete(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    with running_server(
        tmp_path,
        f"--model={tiny_llama_dir}",
        "--embedding-model=none",
        "--device=cpu",
        "--max-batch-size=1",
        "--max-queue=2",
    ) as server:
        body = {"prompt": "Hi", "max_tokens": 100, "temperature": 0, "ignore_eos": True}

        async def one(client: httpx.AsyncClient) -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            response = await client.post("/v1/completions", json=body)
            return response, time.perf_counter() - started

        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            results = await asyncio.gather(*(one(client) for _ in range(12)))
    rejected = [(r, t) for r, t in results if r.status_code == 429]
    accepted = [r for r, _ in results if r.status_code != 429]
    assert rejected, "a burst of 12 into 1 slot and a queue of 2 was never refused"
    assert len(accepted) >= 3
    for response, latency in rejected:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "queue_full"
        assert latency < 2.0, latency
    for response in accepted:
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 100


def test_sigterm_drains_in_flight_requests_and_exits_zero(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    with running_server(
        tmp_path,
        f"--model={tiny_llama_dir}",
        "--embedding-model=none",
        "--device=cpu",
        "--max-batch-size=4",
        "--drain-timeout-s=60",
    ) as server:
        body = {"prompt": "Hi", "max_tokens": 300, "temperature": 0, "ignore_eos": True}
        responses: list[httpx.Response] = []

        def request() -> None:
            responses.append(httpx.post(server.url + "/v1/completions", json=body, timeout=120))

        threads = [threading.Thread(target=request) for _ in range(3)]
        for thread in threads:
            thread.start()
        server.wait_until("3 running requests", lambda: stats(server)["running"] == 3, 30)
        server.process.send_signal(signal.SIGTERM)
        server.wait_until(
            "readiness to fail", lambda: server.get("/health/ready").status_code == 503, 5
        )
        refused = httpx.post(server.url + "/v1/completions", json=body, timeout=10)
        exit_code = server.process.wait(timeout=90)
        for thread in threads:
            thread.join(timeout=10)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "draining"
    assert refused.headers["retry-after"] == "1"
    assert exit_code == 0, server.log_tail()
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert {r.json()["choices"][0]["finish_reason"] for r in responses} == {"length"}
    assert {r.json()["usage"]["completion_tokens"] for r in responses} == {300}


def test_the_drain_timeout_ends_the_rest_with_abort(tmp_path: Path, tiny_llama_dir: Path) -> None:
    with running_server(
        tmp_path,
        f"--model={tiny_llama_dir}",
        "--embedding-model=none",
        "--device=cpu",
        "--drain-timeout-s=0.5",
    ) as server:
        chunks: list[str] = []

        def stream() -> None:
            with httpx.stream(
                "POST",
                server.url + "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 450,
                    "stream": True,
                    "ignore_eos": True,
                },
                timeout=60,
            ) as response:
                chunks.extend(line for line in response.iter_lines() if line)

        thread = threading.Thread(target=stream)
        thread.start()
        server.wait_until("a running request", lambda: stats(server)["running"] == 1, 30)
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=60)
        thread.join(timeout=10)
    assert exit_code == 0
    assert chunks[-1] == "data: [DONE]"
    assert '"finish_reason":"abort"' in chunks[-2]


@pytest.mark.timeout(600)  # dequantising the GGUF takes minutes on a busy 2-core machine
def test_the_embedded_smollm2_knows_the_capital_of_france(tmp_path: Path) -> None:
    with running_server(tmp_path, "--embedding-model=none", startup_timeout_s=300) as server:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0) as client:
            [model] = client.models.list().data
            answer = client.chat.completions.create(
                model=model.id,
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                temperature=0,
                max_tokens=30,
            )
        exit_code = server.terminate()
    assert model.id == "SmolLM2-135M-Instruct"
    content = answer.choices[0].message.content
    assert content is not None
    assert "Paris" in content, content
    assert exit_code == 0


EDGE_CASES: list[dict[str, Any]] = [
    {"top_k": 2**31 - 1, "temperature": 1.5},
    {"top_k": 1, "temperature": 2.0, "seed": 2**64 - 1},
    {"seed": -(2**63), "temperature": 0.7, "top_p": 1e-9},
    {"temperature": 0.0, "top_p": 0.01, "top_k": -1},
    {"stop": ["\u00e9", "\U0001f600", "\n"], "temperature": 1.0, "seed": 3},
    {"stop_token_ids": [0, 2**31 - 1], "max_tokens": 3},
    {"priority": 2**31 - 1},
    {"priority": -(2**31 - 1), "max_tokens": 1},
    {"max_tokens": 400, "ignore_eos": True, "stream": True},
    {"prompt": "\u0000\ud7ff\U0010ffff emoji \U0001f600 and RTL \u05d0\u05d1", "max_tokens": 4},
]


@pytest.mark.parametrize("fields", EDGE_CASES)
def test_extreme_but_valid_requests_reach_the_real_engine_without_a_5xx(
    tiny_server: ServerProcess, fields: dict[str, Any]
) -> None:
    body = {"prompt": "Hello", "max_tokens": 8, **fields}
    response = httpx.post(
        tiny_server.url + "/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    if body.get("stream"):
        assert response.text.endswith("data: [DONE]\n\n")
        assert '"error"' not in response.text
    else:
        assert response.json()["choices"][0]["finish_reason"] in {"stop", "length"}


def test_a_model_that_cannot_load_exits_with_status_1(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelplane_server", "--host=127.0.0.1",
             f"--port={free_port()}", f"--model={missing}", "--embedding-model=none"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server_environment(),
        )  # fmt: skip
    exit_code = process.wait(timeout=120)
    output = log.read_text()
    assert exit_code == 1, output
    assert "loading the models failed" in output
    assert str(missing) in output


def metric(server: ServerProcess, name: str) -> float:
    """The value of one sample (`name` with its labels, as exposed); 0 if not exposed yet."""
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_real_engines_report_to_the_metrics(
    client: openai.OpenAI, tiny_server: ServerProcess
) -> None:
    names = [
        "modelplane_generation_tokens_total",
        'modelplane_requests_finished_total{finished_reason="length"}',
        "modelplane_time_to_first_token_seconds_count",
        "modelplane_inter_token_latency_seconds_count",
        "modelplane_batch_size_count",
        "modelplane_embedding_batch_size_count",
        "modelplane_embedding_tokens_total",
    ]
    before = {name: metric(tiny_server, name) for name in names}
    for _ in range(2):
        client.completions.create(
            model="tiny-llama", prompt="Hi", max_tokens=6, temperature=0, extra_body=NO_EOS
        )
    [embedding_model] = [
        m.id for m in client.models.list() if (m.model_extra or {}).get("kind") == "embedding"
    ]
    client.embeddings.create(input=["one", "two"], model=embedding_model)
    delta = {name: metric(tiny_server, name) - before[name] for name in names}
    assert delta["modelplane_generation_tokens_total"] == 12
    assert delta['modelplane_requests_finished_total{finished_reason="length"}'] == 2
    assert delta["modelplane_time_to_first_token_seconds_count"] == 2
    assert delta["modelplane_inter_token_latency_seconds_count"] == 10
    assert delta["modelplane_batch_size_count"] >= 6
    assert delta["modelplane_embedding_batch_size_count"] >= 1
    assert delta["modelplane_embedding_tokens_total"] > 0


def test_torch_threads_follow_the_cpus_not_torch_defaults(tiny_server: ServerProcess) -> None:
    """The server sizes torch's thread pool itself (cpus.torch_threads) and says so at startup."""
    from modelplane_server.model.cpus import torch_threads

    expected = torch_threads(0, environ=server_environment())
    assert f"torch intra-op threads: {expected}" in tiny_server.log.read_text(errors="replace")

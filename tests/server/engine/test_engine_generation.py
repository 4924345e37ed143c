"""The generation engine on real models: greedy parity with `generate()`, sampling, stops, failures.

Parity is the strong check of the padded-window KV cache: prompts of different lengths join a
running batch at different times and leave at different times, and every greedy output must equal
what HF `generate()` produces for that prompt alone (fp32, CPU).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_fakes import RecordingObserver, wait_until
from transformers import AutoModelForCausalLM

from modelplane_server.engine.contract import (
    FinishReason,
    GenerationConfig,
    GenerationDelta,
    GenerationRequest,
    SamplingParams,
)
from modelplane_server.engine.generation import ContinuousBatchingEngine
from modelplane_server.model import kv_cache as kv_cache_module
from modelplane_server.model.loading import load_generation_engine


def load(
    model: str, observer: RecordingObserver | None = None, **config: Any
) -> ContinuousBatchingEngine:
    return load_generation_engine(
        GenerationConfig(model=model, dtype="float32", device="cpu", **config), observer=observer
    )


def request(request_id: str, prompt: Sequence[int], **params: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id, tuple(prompt), SamplingParams(**params), arrival_time=time.monotonic()
    )


async def collect(stream: AsyncIterator[GenerationDelta]) -> list[GenerationDelta]:
    return [delta async for delta in stream]


def token_ids(deltas: Sequence[GenerationDelta]) -> list[int]:
    return [token for delta in deltas for token in delta.token_ids]


def reference(model: Any, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """What HF generate() gives for the prompt alone, greedy, up to and including EOS."""
    inputs = torch.tensor([list(prompt)])
    with torch.no_grad():
        output = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    generated: list[int] = output[0, len(prompt) :].tolist()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    for index, token in enumerate(generated):
        if token in eos_ids:
            return generated[: index + 1]
    return generated


async def run_staggered(
    engine: ContinuousBatchingEngine, jobs: Sequence[tuple[list[int], int]], first_wave: int
) -> list[list[int]]:
    """Submit the first wave, let the batch decode a few steps, then submit the rest."""

    async def run(index: int, prompt: list[int], max_tokens: int) -> list[int]:
        if index >= first_wave:
            steps = engine.stats().steps_total
            await wait_until(lambda: engine.stats().steps_total >= steps + 2 + index - first_wave)
        deltas = await collect(
            engine.generate(request(f"r{index}", prompt, max_tokens=max_tokens, temperature=0.0))
        )
        return token_ids(deltas)

    return list(await asyncio.gather(*(run(index, *job) for index, job in enumerate(jobs))))


@pytest.mark.parametrize("small_buffers", [False, True], ids=["default-buffers", "tiny-buffers"])
async def test_greedy_matches_generate_for_a_staggered_mixed_batch(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch, small_buffers: bool
) -> None:
    if small_buffers:
        # Start the KV buffers at 1 row x 8 columns, so growing rows, growing columns, compacting
        # the window and shifting it right for a longer newcomer all happen many times.
        monkeypatch.setattr(kv_cache_module, "_INITIAL_ROWS", 1)
        monkeypatch.setattr(kv_cache_module, "_INITIAL_COLUMNS", 8)
    observer = RecordingObserver()
    engine = load(str(tiny_llama_dir), observer, max_batch_size=4)
    rng = random.Random(3)  # noqa: S311 (reproducible test data, not cryptography)
    jobs = [
        ([rng.randrange(3, 40_000) for _ in range(rng.randint(2, 60))], rng.randint(3, 24))
        for _ in range(12)
    ]
    await engine.start()
    outputs = await run_staggered(engine, jobs, first_wave=3)
    await engine.stop(5)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    for (prompt, max_tokens), output in zip(jobs, outputs, strict=True):
        assert output == reference(model, prompt, max_tokens)
    # The batch really was shared and reshaped: several sizes, never above the limit.
    sizes = {step.batch_size for step in observer.steps}
    assert max(sizes) == 4
    assert len(sizes) >= 3


async def test_sequences_up_to_the_context_length_stay_exact_in_capped_buffers(
    tiny_llama_dir: Path,
) -> None:
    engine = load(str(tiny_llama_dir), max_batch_size=2)
    rng = random.Random(5)  # noqa: S311 (reproducible test data, not cryptography)
    prompts = [[rng.randrange(3, 40_000) for _ in range(length)] for length in (300, 40)]
    await engine.start()
    results = await asyncio.gather(
        *(
            collect(engine.generate(request(f"r{i}", p, temperature=0.0, max_tokens=500)))
            for i, p in enumerate(prompts)
        )
    )
    await engine.stop(5)
    # The context (512) caps the long one at 212 tokens; the KV buffers stay near the context.
    assert results[0][-1].completion_tokens == 212
    assert engine._runner.kv_cache.keys[0].shape[2] <= 512 + 64  # type: ignore[attr-defined]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    for prompt, deltas in zip(prompts, results, strict=True):
        expected = reference(model, prompt, 512 - len(prompt))
        assert token_ids(deltas) == expected[: len(token_ids(deltas))]
        assert len(token_ids(deltas)) == len(expected)


async def test_chunked_prefill_of_a_long_prompt_is_exact(tiny_llama_dir: Path) -> None:
    observer = RecordingObserver()
    engine = load(str(tiny_llama_dir), observer, max_batch_tokens=64)
    rng = random.Random(9)  # noqa: S311 (reproducible test data, not cryptography)
    short = [rng.randrange(3, 40_000) for _ in range(20)]
    long = [rng.randrange(3, 40_000) for _ in range(300)]
    await engine.start()
    running = asyncio.create_task(
        collect(engine.generate(request("short", short, temperature=0.0, max_tokens=40)))
    )
    await wait_until(lambda: engine.stats().steps_total >= 2)
    chunked = await collect(engine.generate(request("long", long, temperature=0.0, max_tokens=12)))
    short_deltas = await running
    await engine.stop(5)
    assert sum(1 for step in observer.steps if step.prefill_tokens and step.decode_tokens) >= 4
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert token_ids(chunked) == reference(model, long, 12)
    assert token_ids(short_deltas) == reference(model, short, 40)


async def test_seeded_sampling_is_reproducible_inside_a_mixed_batch(tiny_llama_dir: Path) -> None:
    engine = load(str(tiny_llama_dir), max_batch_size=8)
    await engine.start()
    prompt = [5, 17, 300, 42]
    sampled = {"temperature": 0.9, "top_k": 50, "top_p": 0.95, "max_tokens": 16}
    streams = [
        engine.generate(request("a", prompt, seed=1234, **sampled)),
        engine.generate(request("greedy", [7, 8, 9], temperature=0.0, max_tokens=16)),
        engine.generate(request("b", prompt, seed=1234, **sampled)),
        engine.generate(request("other-seed", prompt, seed=99, **sampled)),
        engine.generate(request("unseeded", prompt, temperature=1.0, max_tokens=16)),
    ]
    results = [token_ids(deltas) for deltas in await asyncio.gather(*map(collect, streams))]
    alone = token_ids(
        await collect(engine.generate(request("alone", prompt, seed=1234, **sampled)))
    )
    await engine.stop(5)
    assert results[0] == results[2] == alone
    assert results[0] != results[3]


def test_a_prompt_sent_several_times_is_prefilled_once(tiny_llama_dir: Path) -> None:
    """The choices of an n > 1 request share one prefill row; each still decodes exactly."""
    engine = load(str(tiny_llama_dir), max_batch_size=8)
    runner = engine._runner  # type: ignore[attr-defined]
    model = runner._model
    prefill_rows: list[int] = []
    forward = model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] > 1:
            prefill_rows.append(int(kwargs["input_ids"].shape[0]))
        return forward(*args, **kwargs)

    model.forward = counting
    shared, other = [5, 17, 300, 42], [9, 8, 7, 6]
    greedy = SamplingParams(temperature=0.0)
    first = runner.prefill([0, 1, 2, 3], [shared, shared, other, shared], [greedy] * 4)
    generated = {seq_id: [token] for seq_id, token in enumerate(first)}
    for _ in range(5):
        seq_ids, tokens = runner.decode()
        for seq_id, token in zip(seq_ids, tokens, strict=True):
            generated[seq_id].append(token)
    model.forward = forward
    assert prefill_rows == [2]
    expected = reference(model, shared, 6)
    assert [generated[seq_id] for seq_id in (0, 1, 3)] == [expected] * 3
    assert generated[2] == reference(model, other, 6)


async def test_stop_strings_max_tokens_and_stop_ids(tiny_llama_dir: Path) -> None:
    engine = load(str(tiny_llama_dir))
    await engine.start()
    prompt = engine.encode("The quick brown fox")
    free = await collect(engine.generate(request("free", prompt, temperature=0.0, max_tokens=24)))
    text = "".join(delta.text for delta in free)
    assert free[-1].finish_reason is FinishReason.LENGTH
    assert free[-1].completion_tokens == 24
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip()
    stopped = await collect(
        engine.generate(request("stopped", prompt, temperature=0.0, max_tokens=24, stop=(stop,)))
    )
    assert "".join(delta.text for delta in stopped) == text[: text.index(stop)]
    assert stopped[-1].finish_reason is FinishReason.STOP
    stop_id = token_ids(free)[5]
    by_id = await collect(
        engine.generate(
            request("by-id", prompt, temperature=0.0, max_tokens=24, stop_token_ids=(stop_id,))
        )
    )
    assert token_ids(by_id) == token_ids(free)[: token_ids(free).index(stop_id) + 1]
    assert by_id[-1].finish_reason is FinishReason.STOP
    await engine.stop(5)


async def test_cancelled_request_leaves_the_batch_within_one_step(tiny_llama_dir: Path) -> None:
    observer = RecordingObserver()
    engine = load(str(tiny_llama_dir), observer)
    await engine.start()
    keep = asyncio.create_task(
        collect(engine.generate(request("keep", [1, 2, 3], temperature=0.0, max_tokens=120)))
    )
    gone = engine.generate(request("gone", [4, 5, 6, 7], temperature=0.0, max_tokens=120))
    await gone.__anext__()
    await wait_until(lambda: bool(observer.steps) and observer.steps[-1].batch_size == 2)
    await gone.aclose()
    closed_at = len(observer.steps)
    await wait_until(lambda: bool(observer.finished))
    await keep
    await engine.stop(5)
    after = [step.batch_size for step in observer.steps[closed_at:]]
    # The step in flight at the close may still hold two rows; every later one holds one.
    assert after.count(2) <= 1
    assert after[-1] == 1
    assert observer.finished[0].finish_reason is FinishReason.CANCELLED


async def test_a_failing_forward_aborts_its_batch_and_the_next_requests_are_exact(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = load(str(tiny_llama_dir), max_batch_size=4)
    model = engine._runner._model  # type: ignore[attr-defined]
    original = model.forward
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    await engine.start()
    failed = await asyncio.gather(
        *(
            collect(engine.generate(request(f"f{i}", [9, 8, 7, i + 3], max_tokens=10)))
            for i in range(2)
        )
    )
    assert [deltas[-1].finish_reason for deltas in failed] == ["abort", "abort"]
    prompts = [[11, 12, 13], [20, 21, 22, 23, 24, 25, 26]]
    outputs = await asyncio.gather(
        *(
            collect(engine.generate(request(f"ok{i}", p, temperature=0.0, max_tokens=8)))
            for i, p in enumerate(prompts)
        )
    )
    await engine.stop(5)
    monkeypatch.setattr(model, "forward", original)
    reference_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    for prompt, deltas in zip(prompts, outputs, strict=True):
        assert token_ids(deltas) == reference(reference_model, prompt, 8)


async def test_chat_template_and_model_id(tiny_llama_dir: Path) -> None:
    engine = load(str(tiny_llama_dir), served_model_name="")
    ids = engine.apply_chat_template([{"role": "user", "content": "Hi there"}])
    text = engine._codec.decode(ids)  # type: ignore[attr-defined]
    assert "Hi there" in text
    assert engine.model_id == tiny_llama_dir.name
    assert engine.context_length == 512
    named = load(str(tiny_llama_dir), served_model_name="tiny")
    assert named.model_id == "tiny"


@pytest.mark.slow
# Loading the GGUF (tokenizer conversion and dequantisation) alone takes 30-60 s on 2 busy cores.
@pytest.mark.timeout(600)
async def test_smollm2_greedy_matches_generate_for_staggered_chat_prompts() -> None:
    engine = load("", max_batch_size=4)
    assert engine.model_id == "SmolLM2-135M-Instruct"
    questions = ["What is 2+2?", "Name a color.", "Write a haiku about the sea, please.", "Hi"]
    jobs = [
        (engine.apply_chat_template([{"role": "user", "content": question}]), max_tokens)
        for question, max_tokens in zip(questions, (8, 4, 10, 6), strict=True)
    ]
    await engine.start()
    outputs = await run_staggered(engine, jobs, first_wave=2)
    await engine.stop(5)
    model = engine._runner._model  # type: ignore[attr-defined]
    for (prompt, max_tokens), output in zip(jobs, outputs, strict=True):
        assert output == reference(model, prompt, max_tokens)

"""The embedding engine: dynamic batching (fake runner), exactness of batching, MiniLM quality."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from engine_fakes import RecordingObserver, wait_until

from modelplane_server.engine.contract import (
    EmbeddingConfig,
    NotAcceptingError,
    PromptTooLongError,
    QueueFullError,
)
from modelplane_server.engine.embedding import DynamicBatchingEmbeddingEngine
from modelplane_server.model.loading import load_embedding_engine


class CountingRunner:
    """Embeds a token sequence as [len, sum] normalised; records every batch it is given."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self._delay_s = delay_s
        self._gate = gate

    def embed(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        if self._gate is not None:
            assert self._gate.wait(30)
        time.sleep(self._delay_s)
        self.batches.append(len(batch))
        vectors = []
        for ids in batch:
            raw = [float(len(ids)), float(sum(ids))]
            norm = math.hypot(*raw)
            vectors.append([value / norm for value in raw])
        return vectors


def char_tokenizer(text: str, *, add_special_tokens: bool = True) -> dict[str, list[int]]:
    return {"input_ids": [ord(character) for character in text]}


def fake_engine(
    runner: CountingRunner, observer: RecordingObserver | None = None, **config: Any
) -> DynamicBatchingEmbeddingEngine:
    return DynamicBatchingEmbeddingEngine(
        runner,
        char_tokenizer,
        EmbeddingConfig(**config),
        model_id="fake",
        dimensions=2,
        context_length=16,
        observer=observer,
    )


async def test_concurrent_callers_are_batched_together() -> None:
    runner = CountingRunner(delay_s=0.01)
    observer = RecordingObserver()
    engine = fake_engine(runner, observer, max_batch_size=8, max_wait_ms=50)
    await engine.start()
    results = await asyncio.gather(*(engine.embed([f"text {i}"]) for i in range(20)))
    await engine.stop(5)
    assert sum(runner.batches) == 20
    assert max(runner.batches) == 8
    assert len(runner.batches) <= 4
    assert [size for size, _, _ in observer.embedding_batches] == runner.batches
    for index, (vectors, tokens) in enumerate(results):
        assert tokens == len(f"text {index}")
        assert len(vectors) == 1
        assert math.isclose(math.hypot(*vectors[0]), 1.0)


async def test_an_idle_batcher_runs_a_lone_request_without_waiting_for_company() -> None:
    runner = CountingRunner()
    engine = fake_engine(runner, max_batch_size=8, max_wait_ms=2000)
    await engine.start()
    started = time.monotonic()
    await engine.embed(["alone"])
    elapsed = time.monotonic() - started
    await engine.stop(5)
    assert runner.batches == [1]
    assert elapsed < 1.0  # not the 2 s max_wait_ms


async def test_a_busy_batcher_waits_up_to_max_wait_for_a_batch_to_fill() -> None:
    """After a forward with company, the next text waits (up to max_wait_ms) for more."""
    runner = CountingRunner()
    engine = fake_engine(runner, max_batch_size=8, max_wait_ms=400)
    await engine.start()
    await engine.embed(["one", "two", "three"])  # one job: a batch of three, queued at once
    started = time.monotonic()
    follow_up = asyncio.ensure_future(engine.embed(["four"]))
    await asyncio.sleep(0.1)
    company = await engine.embed(["five"])  # joins the batch that "four" is waiting to fill
    await follow_up
    elapsed = time.monotonic() - started
    await engine.stop(5)
    assert runner.batches == [3, 2]
    assert len(company[0]) == 1
    assert elapsed >= 0.35


async def test_a_caller_with_more_texts_than_a_batch_spans_several() -> None:
    runner = CountingRunner()
    engine = fake_engine(runner, max_batch_size=4, max_wait_ms=1)
    await engine.start()
    texts = ["t" * (i + 1) for i in range(10)]
    vectors, tokens = await engine.embed(texts)
    await engine.stop(5)
    assert runner.batches == [4, 4, 2]
    assert tokens == sum(len(text) for text in texts)
    expected = [CountingRunner().embed([char_tokenizer(text)["input_ids"]])[0] for text in texts]
    assert vectors == expected


async def test_limits_and_lifecycle_errors() -> None:
    gate = threading.Event()
    runner = CountingRunner(gate=gate)
    observer = RecordingObserver()
    engine = fake_engine(runner, observer, max_batch_size=2, max_wait_ms=1, max_queue=3)
    with pytest.raises(NotAcceptingError):
        await engine.embed(["early"])
    await engine.start()
    with pytest.raises(PromptTooLongError):
        await engine.embed(["x" * 17])
    first = asyncio.create_task(engine.embed(["a", "b"]))  # taken by the (gated) batcher
    await wait_until(lambda: engine.waiting == 0)
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(engine.embed(["c", "d", "e"]))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFullError):
        await engine.embed(["f"])
    assert observer.rejected == ["embedding_queue_full"]
    gate.set()
    assert len((await first)[0]) == 2
    assert len((await queued)[0]) == 3
    assert await engine.embed([]) == ([], 0)
    await engine.stop(5)
    with pytest.raises(NotAcceptingError):
        await engine.embed(["late"])


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_batched_embeddings_equal_unbatched_ones(tiny_bert_dir: Path) -> None:
    engine = load_embedding_engine(
        EmbeddingConfig(model=str(tiny_bert_dir), device="cpu", max_batch_size=16, max_wait_ms=20)
    )
    assert engine.dimensions == 32
    assert engine.context_length == 64
    texts = ["short", "a somewhat longer sentence with more tokens", "mid length text", "x"]
    await engine.start()
    alone = [(await engine.embed([text]))[0][0] for text in texts]
    together = await asyncio.gather(*(engine.embed([text]) for text in texts))
    batched, _ = await engine.embed(texts)
    with pytest.raises(PromptTooLongError):
        await engine.embed(["word " * 100])
    await engine.stop(5)
    for single, ([concurrent], _), in_one_call in zip(alone, together, batched, strict=True):
        assert math.isclose(math.sqrt(cosine(single, single)), 1.0, rel_tol=1e-5)
        assert all(
            math.isclose(x, y, abs_tol=1e-5) for x, y in zip(single, concurrent, strict=True)
        )
        assert all(
            math.isclose(x, y, abs_tol=1e-5) for x, y in zip(single, in_one_call, strict=True)
        )


@pytest.mark.slow
async def test_minilm_ranks_related_texts_above_unrelated_ones() -> None:
    observer = RecordingObserver()
    engine = load_embedding_engine(EmbeddingConfig(device="cpu", max_wait_ms=20), observer=observer)
    assert engine.model_id == "all-MiniLM-L6-v2"
    assert engine.dimensions == 384
    assert engine.context_length == 256
    await engine.start()
    texts = [
        "A man is playing a guitar.",
        "Someone strums an acoustic guitar on stage.",
        "The stock market fell sharply today.",
    ]
    results = await asyncio.gather(*(engine.embed([text]) for text in texts))
    await engine.stop(5)
    guitar, strum, stocks = (vectors[0] for vectors, _ in results)
    assert cosine(guitar, strum) > cosine(guitar, stocks) + 0.3
    assert max(size for size, _, _ in observer.embedding_batches) > 1

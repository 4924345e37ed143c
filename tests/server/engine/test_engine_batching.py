"""The continuous batcher against a fake runner: scheduling, limits, cancellation, deadlines, drain.

No torch: `engine_fakes.FakeRunner` produces scripted tokens, so these tests pin the engine's
behaviour exactly and run in milliseconds.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Sequence

import pytest
from engine_fakes import CharacterCodec, FakeRunner, RecordingObserver, default_token, wait_until

from modelplane_server.engine.contract import (
    FinishReason,
    GenerationConfig,
    GenerationDelta,
    GenerationRequest,
    InvalidRequestError,
    NotAcceptingError,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
)
from modelplane_server.engine.generation import ContinuousBatchingEngine

EOS = ord("#")


def make_engine(
    runner: FakeRunner | None = None,
    observer: RecordingObserver | None = None,
    context_length: int = 64,
    **config: int,
) -> tuple[ContinuousBatchingEngine, FakeRunner, RecordingObserver]:
    runner = runner or FakeRunner()
    observer = observer or RecordingObserver()
    engine = ContinuousBatchingEngine(
        runner,
        CharacterCodec(context_length),
        GenerationConfig(**config),
        eos_token_ids=[EOS],
        observer=observer,
    )
    return engine, runner, observer


def request(
    request_id: str,
    prompt: str = "hi",
    priority: int = 0,
    queue_deadline: float | None = None,
    deadline: float | None = None,
    **params: object,
) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        prompt_token_ids=tuple(ord(c) for c in prompt),
        params=SamplingParams(**params),  # type: ignore[arg-type]
        priority=priority,
        arrival_time=time.monotonic(),
        queue_deadline=queue_deadline,
        deadline=deadline,
    )


async def collect(stream: AsyncIterator[GenerationDelta]) -> list[GenerationDelta]:
    return [delta async for delta in stream]


def text_of(deltas: Sequence[GenerationDelta]) -> str:
    return "".join(delta.text for delta in deltas)


def expected_text(prompt: str, count: int) -> str:
    ids = [ord(c) for c in prompt]
    return "".join(chr(default_token(ids, index)) for index in range(count))


async def test_many_concurrent_requests_all_complete_within_batch_limits() -> None:
    engine, runner, observer = make_engine(FakeRunner(step_delay_s=0.001), max_batch_size=8)
    await engine.start()
    rng = random.Random(7)  # noqa: S311 (reproducible test data, not cryptography)
    jobs = [(f"r{i}", "p" * rng.randint(1, 20), rng.randint(1, 30)) for i in range(100)]

    async def run(request_id: str, prompt: str, max_tokens: int) -> list[GenerationDelta]:
        await asyncio.sleep(rng.random() * 0.05)
        return await collect(engine.generate(request(request_id, prompt, max_tokens=max_tokens)))

    results = await asyncio.gather(*(run(*job) for job in jobs))
    await engine.stop(5)
    for (_, prompt, max_tokens), deltas in zip(jobs, results, strict=True):
        assert deltas[-1].finish_reason is FinishReason.LENGTH
        assert deltas[-1].completion_tokens == max_tokens
        assert text_of(deltas) == expected_text(prompt, max_tokens)
        assert sum(len(delta.token_ids) for delta in deltas) == max_tokens
    assert max(len(ids) for ids in runner.decodes) == 8
    assert all(step.batch_size <= 8 for step in observer.steps)
    assert len(observer.finished) == 100
    assert engine.stats().running == 0
    assert engine.stats().waiting == 0


async def test_finished_sequences_leave_and_queued_join_every_step() -> None:
    engine, runner, _ = make_engine(max_batch_size=2)
    await engine.start()
    short = engine.generate(request("short", max_tokens=2))
    long = engine.generate(request("long", max_tokens=6))
    late = engine.generate(request("late", max_tokens=2))
    await asyncio.gather(collect(short), collect(long), collect(late))
    await engine.stop(5)
    # "late" (seq 2) is prefilled in the step right after "short" (seq 0) finished, while "long"
    # runs.
    assert runner.prefills == [[0, 1], [2]]
    assert runner.decodes[0] == [0, 1]
    assert runner.decodes[1] == [1, 2]


class _SlowDecodeRunner(FakeRunner):
    """Decodes take `DECODE_S`; records when each decode ended."""

    DECODE_S = 0.3

    def __init__(self) -> None:
        super().__init__()
        self.decode_ends: list[float] = []

    def decode(self) -> tuple[list[int], list[int]]:
        time.sleep(self.DECODE_S)
        result = super().decode()
        self.decode_ends.append(time.monotonic())
        return result


async def test_a_newcomers_first_token_is_delivered_before_the_step_decodes() -> None:
    """TTFT = wait + prefill: the first token does not also wait for the batch's decode."""
    runner = _SlowDecodeRunner()
    engine, _, _ = make_engine(runner, max_batch_size=4)
    await engine.start()
    running = engine.generate(request("running", max_tokens=8))
    await wait_until(lambda: len(runner.decodes) >= 1)
    late = engine.generate(request("late", max_tokens=3))
    first = await anext(late)
    first_at = time.monotonic()
    assert first.text == expected_text("hi", 1)
    rest = await collect(late)
    await collect(running)
    await engine.stop(5)
    # The decode that ran right after "late"'s prefill (the first one containing its row) ended
    # after "late" already had its first token.
    [late_id] = {seq_id for seq_ids in runner.prefills for seq_id in seq_ids} - {0}
    step = next(i for i, seq_ids in enumerate(runner.decodes) if late_id in seq_ids)
    assert first_at < runner.decode_ends[step] - _SlowDecodeRunner.DECODE_S / 2
    assert text_of([first, *rest]) == expected_text("hi", 3)


async def test_token_budget_limits_the_prefill_of_one_step() -> None:
    # Each 8-token prompt costs 9 (prefill + its first decode); a budget of 20 fits two per step.
    engine, runner, observer = make_engine(max_batch_tokens=20, max_batch_size=8)
    await engine.start()
    streams = [engine.generate(request(f"r{i}", "x" * 8, max_tokens=1)) for i in range(3)]
    await asyncio.gather(*(collect(stream) for stream in streams))
    await engine.stop(5)
    assert runner.prefills == [[0, 1], [2]]
    assert [step.prefill_tokens for step in observer.steps] == [16, 8]


async def test_max_prefill_tokens_spreads_a_burst_over_steps() -> None:
    # Well inside the step's token budget, the prefill cap still admits two 8-token prompts a step
    # (9 each with its first decode), so no step stalls the running rows for the whole burst.
    engine, runner, observer = make_engine(
        max_batch_tokens=4096, max_prefill_tokens=20, max_batch_size=8
    )
    await engine.start()
    streams = [engine.generate(request(f"r{i}", "x" * 8, max_tokens=2)) for i in range(5)]
    await asyncio.gather(*(collect(stream) for stream in streams))
    await engine.stop(5)
    assert runner.prefills == [[0, 1], [2, 3], [4]]
    assert max(step.prefill_tokens for step in observer.steps) <= 20


async def test_a_prompt_over_the_budget_is_prefilled_in_chunks_while_others_decode() -> None:
    engine, runner, observer = make_engine(
        FakeRunner(step_delay_s=0.001), max_batch_tokens=80, context_length=1024
    )
    await engine.start()
    short = engine.generate(request("short", max_tokens=30))
    await short.__anext__()
    long_prompt = "x" * 300
    deltas = await collect(engine.generate(request("long", long_prompt, max_tokens=3)))
    assert text_of(deltas) == expected_text(long_prompt, 3)
    assert (await collect(short))[-1].finish_reason is FinishReason.LENGTH
    await engine.stop(5)
    # Chunks cover the prompt in order, each within the step's budget less the decode row.
    assert [(start, end) for _, start, end in runner.chunks] == [
        (0, 78),
        (78, 156),
        (156, 234),
        (234, 300),
    ]
    # "short" decoded in every step that carried a chunk.
    chunk_steps = [step for step in observer.steps if step.prefill_tokens]
    assert all(step.decode_tokens >= 1 for step in chunk_steps)
    assert max(step.prefill_tokens + step.decode_tokens for step in observer.steps) <= 80


async def test_cancelling_a_prompt_mid_chunking_drops_its_partial_prefill() -> None:
    engine, runner, observer = make_engine(
        FakeRunner(step_delay_s=0.005), max_batch_tokens=70, context_length=2048
    )
    await engine.start()
    stream = engine.generate(request("long", "y" * 1000, max_tokens=3))
    await wait_until(lambda: len(runner.chunks) >= 2)
    await stream.aclose()
    await wait_until(lambda: len(observer.finished) == 1)
    after = await collect(engine.generate(request("after", max_tokens=2)))
    await engine.stop(5)
    assert observer.finished[0].finish_reason is FinishReason.CANCELLED
    assert len(runner.chunks) < 1000 // 70
    assert 0 in runner.released
    assert after[-1].finish_reason is FinishReason.LENGTH


async def test_lower_priority_value_is_admitted_first() -> None:
    gate = threading.Event()
    engine, runner, _ = make_engine(FakeRunner(gate=gate), max_batch_size=1)
    await engine.start()
    first = engine.generate(request("first", max_tokens=1))
    await wait_until(lambda: engine.stats().waiting == 0)  # "first" is in its (gated) prefill
    low = engine.generate(request("low", priority=5, max_tokens=1))
    high = engine.generate(request("high", priority=0, max_tokens=1))
    also_high = engine.generate(request("also-high", priority=0, max_tokens=1))
    gate.set()
    await asyncio.gather(collect(first), collect(low), collect(high), collect(also_high))
    await engine.stop(5)
    assert runner.prefills == [[0], [2], [3], [1]]


async def test_bounded_queue_by_requests_raises_queue_full() -> None:
    gate = threading.Event()
    engine, _, observer = make_engine(FakeRunner(gate=gate), max_queue=2, max_batch_size=1)
    await engine.start()
    streams = [engine.generate(request("running", max_tokens=1))]
    await wait_until(lambda: engine.stats().waiting == 0)
    streams += [engine.generate(request(f"q{i}", max_tokens=1)) for i in range(2)]
    with pytest.raises(QueueFullError) as raised:
        engine.generate(request("one-too-many"))
    assert raised.value.retry_after_s >= 1.0
    assert observer.rejected == ["queue_full"]
    gate.set()
    await asyncio.gather(*(collect(stream) for stream in streams))
    await engine.stop(5)


async def test_bounded_queue_by_prompt_tokens_raises_queue_full() -> None:
    gate = threading.Event()
    engine, _, observer = make_engine(FakeRunner(gate=gate), max_queue_tokens=10, max_batch_size=1)
    await engine.start()
    streams = [engine.generate(request("running", max_tokens=1))]
    await wait_until(lambda: engine.stats().waiting == 0)
    streams.append(engine.generate(request("q", "x" * 8, max_tokens=1)))
    assert engine.stats().waiting_prompt_tokens == 8
    with pytest.raises(QueueFullError):
        engine.generate(request("too-many-tokens", "x" * 3))
    assert observer.rejected == ["queue_tokens_full"]
    gate.set()
    await asyncio.gather(*(collect(stream) for stream in streams))
    await engine.stop(5)


async def test_prompt_too_long_and_invalid_requests_are_rejected_at_submission() -> None:
    engine, _, _ = make_engine(context_length=16)
    await engine.start()
    with pytest.raises(PromptTooLongError) as raised:
        engine.generate(request("long", "x" * 16))
    assert raised.value.limit == 16
    with pytest.raises(InvalidRequestError):
        engine.generate(request("empty", ""))
    with pytest.raises(InvalidRequestError):
        engine.generate(request("bad", top_p=0.0))
    # A prompt that fits gets max_tokens capped to the context: it ends with LENGTH there.
    deltas = await collect(engine.generate(request("capped", "x" * 10, max_tokens=100)))
    assert deltas[-1].completion_tokens == 6
    assert deltas[-1].finish_reason is FinishReason.LENGTH
    await engine.stop(5)


async def test_not_started_and_draining_engines_refuse_work() -> None:
    engine, _, _ = make_engine()
    with pytest.raises(NotAcceptingError):
        engine.generate(request("early"))
    await engine.start()
    await engine.stop(1)
    with pytest.raises(NotAcceptingError):
        engine.generate(request("late"))


async def test_eos_and_stop_token_ids_finish_with_stop_and_stay_out_of_the_text() -> None:
    # Tokens spell "ab#..." for the prompt below; "#" is EOS and "b" a stop token id.
    def token(prompt: Sequence[int], index: int) -> int:
        return ord("ab#cd"[index % 5])

    engine, _, observer = make_engine(FakeRunner(token=token))
    await engine.start()
    eos = await collect(engine.generate(request("eos", max_tokens=10)))
    stop_id = await collect(
        engine.generate(request("stop-id", max_tokens=10, stop_token_ids=(ord("b"),)))
    )
    ignored = await collect(engine.generate(request("ignore", max_tokens=4, ignore_eos=True)))
    await engine.stop(5)
    assert (text_of(eos), eos[-1].finish_reason, eos[-1].completion_tokens) == ("ab", "stop", 3)
    assert eos[-1].token_ids[-1] == EOS
    assert (text_of(stop_id), stop_id[-1].finish_reason) == ("a", "stop")
    assert (text_of(ignored), ignored[-1].finish_reason) == ("ab#c", "length")
    assert [stats.finish_reason for stats in observer.finished] == ["stop", "stop", "length"]


async def test_stop_strings_end_the_request_and_never_leak() -> None:
    text = "hello STOP world"

    def token(prompt: Sequence[int], index: int) -> int:
        return ord(text[index % len(text)])

    engine, runner, observer = make_engine(FakeRunner(token=token, step_delay_s=0.002))
    await engine.start()
    deltas = await collect(engine.generate(request("s", max_tokens=40, stop=("STOP", "xyz"))))
    streamed = [delta.text for delta in deltas]
    await wait_until(lambda: len(observer.finished) == 1)
    await engine.stop(5)
    assert "".join(streamed) == "hello "
    assert all("S" not in chunk for chunk in streamed)
    assert deltas[-1].finish_reason is FinishReason.STOP
    assert observer.finished[0].finish_reason is FinishReason.STOP
    # The engine freed the row within a step or two of the stop string, not at max_tokens.
    assert len(runner.decodes) < 15


async def test_closing_a_stream_frees_its_slot_within_one_step() -> None:
    engine, runner, observer = make_engine(FakeRunner(step_delay_s=0.005), max_batch_size=4)
    await engine.start()
    keep = engine.generate(request("keep", max_tokens=60))
    gone = engine.generate(request("gone", max_tokens=60))
    await gone.__anext__()
    await wait_until(lambda: len(runner.decodes) >= 3)
    await gone.aclose()
    closed_at = len(runner.decodes)
    await wait_until(lambda: any(stats.request_id == "gone" for stats in observer.finished))
    # At most the step already running when we closed still carries the row.
    with_row = [ids for ids in runner.decodes[closed_at:] if 1 in ids]
    assert len(with_row) <= 1
    assert observer.finished[0].finish_reason is FinishReason.CANCELLED
    assert (await collect(keep))[-1].finish_reason is FinishReason.LENGTH
    await engine.stop(5)


async def test_cancelling_the_consumer_task_cancels_the_request() -> None:
    engine, runner, observer = make_engine(FakeRunner(step_delay_s=0.005))
    await engine.start()
    stream = engine.generate(request("client", max_tokens=1000))
    task = asyncio.create_task(collect(stream))
    await wait_until(lambda: len(runner.decodes) >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: len(observer.finished) == 1)
    assert observer.finished[0].finish_reason is FinishReason.CANCELLED
    await wait_until(lambda: engine.stats().running == 0)
    await engine.stop(5)


async def test_cancelling_a_queued_request_removes_it_from_the_queue() -> None:
    gate = threading.Event()
    engine, runner, observer = make_engine(FakeRunner(gate=gate), max_batch_size=1)
    await engine.start()
    running = engine.generate(request("running", max_tokens=1))
    await wait_until(lambda: engine.stats().waiting == 0)
    queued = engine.generate(request("queued", max_tokens=1))
    assert engine.stats().waiting == 1
    await queued.aclose()
    gate.set()
    await collect(running)
    await wait_until(lambda: engine.stats().waiting == 0 and len(observer.finished) == 2)
    await engine.stop(5)
    assert runner.prefills == [[0]]
    assert {stats.request_id: stats.finish_reason for stats in observer.finished} == {
        "running": "length",
        "queued": "cancelled",
    }


async def test_deadlines_end_requests_with_timeout() -> None:
    engine, _, observer = make_engine(FakeRunner(step_delay_s=0.005), max_batch_size=1)
    await engine.start()
    running = engine.generate(request("total", max_tokens=10_000, deadline=time.monotonic() + 0.3))
    await wait_until(lambda: engine.stats().waiting == 0)
    # The only batch slot is taken, so this one waits in the queue until its queue deadline.
    queued = engine.generate(request("queued", max_tokens=1, queue_deadline=time.monotonic() + 0.1))
    queued_deltas = await collect(queued)
    assert queued_deltas[-1].finish_reason is FinishReason.TIMEOUT
    assert queued_deltas[-1].completion_tokens == 0
    running_deltas = await collect(running)
    assert running_deltas[-1].finish_reason is FinishReason.TIMEOUT
    assert 0 < running_deltas[-1].completion_tokens < 10_000
    await engine.stop(5)
    assert sorted(stats.finish_reason for stats in observer.finished) == ["timeout", "timeout"]


async def test_drain_finishes_in_flight_work() -> None:
    engine, _, _ = make_engine(FakeRunner(step_delay_s=0.002), max_batch_size=2)
    await engine.start()
    streams = [engine.generate(request(f"r{i}", max_tokens=10)) for i in range(4)]
    tasks = [asyncio.create_task(collect(stream)) for stream in streams]
    await engine.stop(10)
    results = await asyncio.gather(*tasks)
    assert all(deltas[-1].finish_reason is FinishReason.LENGTH for deltas in results)


async def test_drain_aborts_what_is_left_after_the_timeout() -> None:
    engine, _, observer = make_engine(FakeRunner(step_delay_s=0.01), max_batch_size=1)
    await engine.start()
    streams = [engine.generate(request(f"r{i}", max_tokens=10_000)) for i in range(2)]
    tasks = [asyncio.create_task(collect(stream)) for stream in streams]
    started = time.monotonic()
    await engine.stop(0.2)
    assert time.monotonic() - started < 5
    results = await asyncio.gather(*tasks)
    assert [deltas[-1].finish_reason for deltas in results] == ["abort", "abort"]
    assert len(observer.finished) == 2


async def test_failing_decode_aborts_its_batch_and_the_loop_survives() -> None:
    engine, _, observer = make_engine(FakeRunner(fail_decode_at={3}))
    await engine.start()
    failed = await asyncio.gather(
        *(collect(engine.generate(request(f"r{i}", max_tokens=50))) for i in range(3))
    )
    assert [deltas[-1].finish_reason for deltas in failed] == ["abort"] * 3
    after = await collect(engine.generate(request("after", max_tokens=5)))
    assert after[-1].finish_reason is FinishReason.LENGTH
    await engine.stop(5)
    assert engine.stats().running == 0
    assert [stats.finish_reason for stats in observer.finished][-1] == "length"


async def test_failing_prefill_aborts_only_the_newcomers() -> None:
    engine, _, _ = make_engine(FakeRunner(fail_prefill_at={2}, step_delay_s=0.002))
    await engine.start()
    first = engine.generate(request("first", max_tokens=20))
    await first.__anext__()
    second = await collect(engine.generate(request("second", max_tokens=5)))
    assert second[-1].finish_reason is FinishReason.ABORT
    assert (await collect(first))[-1].finish_reason is FinishReason.LENGTH
    await engine.stop(5)


async def test_observer_sees_request_timings_and_stats_are_cheap_snapshots() -> None:
    engine, _, observer = make_engine(FakeRunner(step_delay_s=0.002))
    await engine.start()
    await collect(engine.generate(request("timed", max_tokens=5)))
    await engine.stop(5)
    (stats,) = observer.finished
    assert stats.completion_tokens == 5
    assert stats.time_to_first_token_s is not None
    assert stats.time_to_first_token_s <= stats.e2e_latency_s
    assert len(stats.inter_token_latencies_s) == 4
    assert stats.queue_time_s >= 0
    snapshot = engine.stats()
    assert snapshot.steps_total == len(observer.steps) > 0
    assert snapshot.last_step_monotonic is not None
    assert snapshot.recent_batch_sizes[-1] == 1


async def test_kv_cache_usage_counts_the_running_sequences_tokens() -> None:
    """The KV-usage gauge's source: prompt + generated tokens of the running sequences over
    --max-batch-size x context length; back to 0 when they finish."""
    engine, _, _ = make_engine(FakeRunner(step_delay_s=0.01), max_batch_size=4, context_length=64)
    await engine.start()
    streams = [engine.generate(request(f"r{i}", "abcdefgh", max_tokens=40)) for i in range(2)]
    tasks = [asyncio.create_task(collect(stream)) for stream in streams]
    await wait_until(lambda: engine.stats().kv_cache_tokens >= 2 * (8 + 5))
    held = engine.stats()
    assert held.kv_cache_capacity_tokens == 4 * 64
    assert held.kv_cache_tokens <= 2 * (8 + 40)
    await asyncio.gather(*tasks)
    await wait_until(lambda: engine.stats().kv_cache_tokens == 0)
    await engine.stop(5)

"""Continuous (iteration-level) batching for generation: admission, the step loop, and streaming.

The asyncio side (`generate`, the streams, `stop`) and one dedicated step thread meet here:

- `generate()` admits synchronously into a bounded priority queue (by requests and by prompt tokens)
  and returns a stream. The event loop never runs torch.
- The step thread repeats: apply cancellations and deadlines, admit queued sequences while the
  step's token budget (prompt tokens + one decode token per running row) and `max_batch_size`
  allow, prefill the newcomers, then decode one token for every running row (newcomers included);
  finished rows leave at once, so a freed slot is reused at the very next step.
- Each step's tokens go to the streams in one `loop.call_soon_threadsafe` per event loop (twice
  when the step prefilled: first tokens are handed over before the decode). Streams
  detokenise on the event loop and look for stop strings there (off the step thread); a stream that
  finds one, or is closed or cancelled by its consumer, tells the step thread, which frees the row
  at its next step.

The runner behind the `StepRunner` protocol does the torch work (`runner.CausalLMRunner`); tests use
a fake one. Documented choices:

- A prompt must leave room for one generated token: `len(prompt) >= context_length` is rejected with
  `PromptTooLongError` (its `limit` is the context length); otherwise `max_tokens` is capped to what
  fits and the cap ends with LENGTH.
- A prompt that does not fit the step's remaining budget is prefilled in chunks over several steps
  (one such prompt at a time, chunks of at least 64 tokens) while the running rows keep decoding,
  so a long prompt neither waits forever nor stalls every stream for one huge step.
- The EOS or stop token that ends a sequence counts in `completion_tokens` and `token_ids` but never
  appears in the text.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelplane_server.engine.contract import (
    EngineObserver,
    EngineStats,
    FinishReason,
    GenerationConfig,
    GenerationDelta,
    GenerationRequest,
    InvalidRequestError,
    NotAcceptingError,
    PromptTooLongError,
    QueueFullError,
    RequestStats,
    SamplingParams,
    StepStats,
    Tokenizing,
)
from modelplane_server.engine.detokenize import IncrementalDetokenizer, StopStringMatcher

logger = logging.getLogger(__name__)

_RECENT_STEPS = 64
# How often the step thread looks for expired queue deadlines; they need not be exact to the ms.
_DEADLINE_SCAN_INTERVAL_S = 0.05
_IDLE_WAIT_S = 1.0
# The smallest prefill chunk, so a long prompt progresses even when decode rows use the budget.
_MIN_CHUNK = 64


class StepRunner(Protocol):
    """The torch side as the engine sees it; every call happens on the step thread."""

    def prefill(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
    ) -> list[int]:
        """Prefill newcomers, add them to the running batch, return their first tokens."""

    def prefill_chunk(
        self, seq_id: int, prompt: Sequence[int], params: SamplingParams, start: int, end: int
    ) -> int | None:
        """Prefill prompt[start:end] of one long prompt; on its last chunk, add the sequence to
        the running batch and return its first token (None before that)."""

    def decode(self) -> tuple[list[int], list[int]]:
        """One token for every running sequence: (sequence ids, tokens), aligned."""

    def release(self, seq_ids: Sequence[int]) -> None:
        """Remove sequences from the running batch."""

    def reset(self) -> None:
        """Remove every sequence (after a failed step)."""


class TextCodec(Tokenizing, Protocol):
    def decode(self, token_ids: Sequence[int]) -> str: ...


class _State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class _Event:
    """What the step thread tells a stream: new token ids and, at the end, why it finished."""

    token_ids: tuple[int, ...]
    completion_tokens: int
    finish_reason: FinishReason | None = None
    hidden_tail: int = 0  # trailing ids (EOS / stop id) that count as tokens but are not text


class _Sequence:
    """Book-keeping of one request inside the engine (mutable; owned by the step thread)."""

    def __init__(
        self,
        seq_id: int,
        request: GenerationRequest,
        max_tokens: int,
        stop_ids: frozenset[int],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.seq_id = seq_id
        self.request = request
        self.prompt_tokens = len(request.prompt_token_ids)
        self.max_tokens = max_tokens
        self.stop_ids = stop_ids
        self.loop = loop
        self.queue: asyncio.Queue[_Event] = asyncio.Queue()
        self.state = _State.WAITING
        self.generated = 0
        self.new_tokens: list[int] = []
        self.arrival = request.arrival_time or time.monotonic()
        self.admitted_at: float | None = None
        self.prefilled = 0  # prompt tokens already in the cache, for a chunked prefill
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.inter_token_latencies: list[float] = []
        # Written by the event loop thread (a single assignment each), read by the step thread.
        self.cancel_reason: FinishReason | None = None
        self.cancel_completion_tokens: int | None = None

    def deadline_passed(self, now: float) -> bool:
        deadline = self.request.deadline
        if deadline is not None and now >= deadline:
            return True
        queue_deadline = self.request.queue_deadline
        return self.state is _State.WAITING and queue_deadline is not None and now >= queue_deadline


def validate_params(params: SamplingParams) -> None:
    if params.max_tokens < 1:
        raise InvalidRequestError("max_tokens must be at least 1")
    if params.temperature < 0:
        raise InvalidRequestError("temperature must not be negative")
    if not 0 < params.top_p <= 1:
        raise InvalidRequestError("top_p must be in (0, 1]")
    if params.top_k < 0:
        raise InvalidRequestError("top_k must not be negative")


class ContinuousBatchingEngine:
    """`types.GenerationEngine` over a `StepRunner`: continuous batching with one step thread."""

    def __init__(
        self,
        runner: StepRunner,
        codec: TextCodec,
        config: GenerationConfig,
        eos_token_ids: Iterable[int],
        *,
        observer: EngineObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runner = runner
        self._codec = codec
        self._config = config
        self._eos_token_ids = frozenset(eos_token_ids)
        self._observer = observer
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, _Sequence]] = []
        self._waiting_count = 0
        self._waiting_tokens = 0
        self._accepting = False
        self._draining = False
        self._abort = False
        self._cancels: collections.deque[_Sequence] = collections.deque()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._running: dict[int, _Sequence] = {}
        self._running_count = 0
        self._kv_tokens = 0  # prompt + generated tokens of the running sequences
        self._steps_total = 0
        self._last_step: float | None = None
        self._recent_batch_sizes: tuple[int, ...] = ()
        self._mean_latency_s = 0.0
        self._last_deadline_scan = 0.0
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[_Sequence, _Event]]] = {}
        self._finished_rows: list[int] = []
        self._chunking: _Sequence | None = None  # the one long prompt being prefilled in chunks

    # --- Tokenizing ---------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._codec.model_id

    @property
    def context_length(self) -> int:
        return self._codec.context_length

    def encode(self, text: str) -> list[int]:
        return self._codec.encode(text)

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self._codec.apply_chat_template(messages)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="generation-step", daemon=True)
        with self._lock:
            self._accepting = True
        self._thread.start()

    async def stop(self, drain_timeout_s: float) -> None:
        with self._lock:
            self._accepting = False
        thread = self._thread
        if thread is None:
            return
        self._draining = True
        self._wakeup.set()
        await asyncio.to_thread(thread.join, max(drain_timeout_s, 0.0))
        if thread.is_alive():
            self._abort = True
            self._wakeup.set()
            await asyncio.to_thread(thread.join)

    # --- admission (event loop thread) --------------------------------------------------------

    def generate(self, request: GenerationRequest) -> _GenerationStream:
        """Admit a request or raise an `EngineError` at once; then stream it (see contract.py).

        Call it on the event loop that will consume the stream: deltas are delivered to it.
        """
        params = request.params
        validate_params(params)
        prompt_tokens = len(request.prompt_token_ids)
        context = self.context_length
        if prompt_tokens == 0:
            raise InvalidRequestError("the prompt is empty")
        if prompt_tokens >= context:
            raise PromptTooLongError(
                f"the prompt has {prompt_tokens} tokens; the model's context is {context} tokens "
                "and at least one must remain for the completion",
                limit=context,
            )
        loop = asyncio.get_running_loop()
        stop_ids = frozenset(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self._eos_token_ids
        sequence = _Sequence(
            next(self._ids),
            request,
            min(params.max_tokens, context - prompt_tokens),
            stop_ids,
            loop,
        )
        with self._lock:
            if not self._accepting:
                raise NotAcceptingError(
                    "the engine is not accepting requests (draining or not started)"
                )
            if self._waiting_count >= self._config.max_queue:
                reason, message = "queue_full", f"{self._waiting_count} requests are waiting"
            elif (
                self._waiting_count
                and self._waiting_tokens + prompt_tokens > self._config.max_queue_tokens
            ):
                reason, message = (
                    "queue_tokens_full",
                    f"{self._waiting_tokens} prompt tokens are waiting",
                )
            else:
                reason = ""
                heapq.heappush(self._waiting, (request.priority, sequence.seq_id, sequence))
                self._waiting_count += 1
                self._waiting_tokens += prompt_tokens
            waiting = self._waiting_count
        if reason:
            self._notify(lambda observer: observer.on_rejected(reason))
            raise QueueFullError(
                f"the queue is full: {message}", retry_after_s=self._retry_after(waiting)
            )
        self._wakeup.set()
        return _GenerationStream(self, sequence, self._codec, params.stop)

    def _retry_after(self, waiting: int) -> float:
        """Roughly when the queue has room: the queue's worth of batches at the recent latency."""
        batches = waiting / max(self._config.max_batch_size, 1)
        return float(min(60.0, max(1.0, batches * self._mean_latency_s)))

    def cancel(
        self, sequence: _Sequence, reason: FinishReason, completion_tokens: int | None
    ) -> None:
        """End a sequence from any thread (consumer gone, stop string found) at the next step."""
        if sequence.cancel_reason is not None or sequence.state is _State.FINISHED:
            return
        sequence.cancel_completion_tokens = completion_tokens
        sequence.cancel_reason = reason
        self._cancels.append(sequence)
        self._wakeup.set()

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=self._waiting_count,
            running=self._running_count,
            waiting_prompt_tokens=self._waiting_tokens,
            steps_total=self._steps_total,
            last_step_monotonic=self._last_step,
            max_batch_size=self._config.max_batch_size,
            recent_batch_sizes=self._recent_batch_sizes,
            kv_cache_tokens=self._kv_tokens,
            kv_cache_capacity_tokens=self._config.max_batch_size * self.context_length,
        )

    # --- the step thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._iterate():
                    return
            except Exception:
                # A bug in the loop itself, not a failed forward: end all in flight, keep serving.
                logger.exception("generation step loop failed; aborting in-flight requests")
                try:
                    self._abort_all(FinishReason.ABORT)
                    self._flush()
                except Exception:
                    logger.exception("aborting after a failed step failed too")

    def _iterate(self) -> bool:
        """One step; False when the thread should exit."""
        now = self._clock()
        self._apply_cancels()
        self._expire(now)
        if self._abort:
            self._abort_all(FinishReason.ABORT)
            self._flush()
            return False
        newcomers = self._admit()
        self._running_count = len(self._running) + len(newcomers)
        if not newcomers and not self._running:
            self._flush()
            if self._draining and not self._waiting_count:
                return False
            # Idle: nothing runs, so no deadline can pass unnoticed; generate() and stop() wake us.
            self._wakeup.wait(_IDLE_WAIT_S)
            self._wakeup.clear()
            return True
        started = self._clock()
        prefill_tokens = self._prefill(newcomers, started) if newcomers else 0
        chunked = self._chunking is not None
        if chunked:
            prefill_tokens += self._prefill_chunk(prefill_tokens)
        if prefill_tokens and self._running:
            # Newcomers' first tokens go out now, not after this step's decode: a request's
            # time to first token is then its wait plus its prefill, whatever the batch decodes.
            self._flush()
        decode_tokens = self._decode() if self._running else 0
        if self._finished_rows:
            self._runner.release(self._finished_rows)
            self._finished_rows = []
        finished = self._clock()
        self._running_count = len(self._running)
        self._kv_tokens = sum(seq.prompt_tokens + seq.generated for seq in self._running.values())
        self._flush()
        batch_size = max(len(newcomers) + chunked, decode_tokens)
        self._steps_total += 1
        self._last_step = finished
        self._recent_batch_sizes = (*self._recent_batch_sizes[-(_RECENT_STEPS - 1) :], batch_size)
        stats = StepStats(
            batch_size=batch_size,
            prefill_tokens=prefill_tokens,
            decode_tokens=decode_tokens,
            max_batch_size=self._config.max_batch_size,
            duration_s=finished - started,
        )
        self._notify(lambda observer: observer.on_step(stats))
        return True

    def _admit(self) -> list[_Sequence]:
        config = self._config
        budget = config.max_batch_tokens - len(self._running)
        free_rows = config.max_batch_size - len(self._running)
        admitted: list[_Sequence] = []
        cost = 0
        with self._lock:
            while self._waiting and len(admitted) < free_rows:
                sequence = self._waiting[0][2]
                if sequence.state is not _State.WAITING:
                    heapq.heappop(
                        self._waiting
                    )  # finished while queued; its counts are already off
                    continue
                # A newcomer costs its prompt plus its first decode token. The runner groups
                # prompts by length, so padding stays small and is not counted.
                cost += sequence.prompt_tokens + 1
                if cost > budget and (admitted or self._chunking is not None):
                    break
                heapq.heappop(self._waiting)
                self._waiting_count -= 1
                self._waiting_tokens -= sequence.prompt_tokens
                sequence.state = _State.RUNNING
                if cost > budget:
                    # Too long for this step: prefill it in chunks over the next steps, so the
                    # running rows keep decoding and no step exceeds the budget.
                    sequence.admitted_at = self._clock()
                    self._running[sequence.seq_id] = sequence
                    self._chunking = sequence
                    break
                admitted.append(sequence)
        return admitted

    def _prefill_chunk(self, prefill_tokens: int) -> int:
        sequence = self._chunking
        assert sequence is not None
        if sequence.state is not _State.RUNNING:  # cancelled or timed out meanwhile
            self._chunking = None
            return 0
        budget = self._config.max_batch_tokens - len(self._running) - prefill_tokens
        start = sequence.prefilled
        end = min(sequence.prompt_tokens, start + max(budget, _MIN_CHUNK))
        try:
            token = self._runner.prefill_chunk(
                sequence.seq_id,
                sequence.request.prompt_token_ids,
                sequence.request.params,
                start,
                end,
            )
        except Exception:
            logger.exception("prefill chunk of a %d-token prompt failed", sequence.prompt_tokens)
            self._chunking = None
            self._finish(sequence, FinishReason.ABORT)
            return 0
        sequence.prefilled = end
        if token is not None:
            self._chunking = None
            self._accept_token(sequence, token, self._clock())
        return end - start

    def _prefill(self, newcomers: list[_Sequence], started: float) -> int:
        for sequence in newcomers:
            sequence.admitted_at = started
            self._running[sequence.seq_id] = sequence
        seq_ids = [sequence.seq_id for sequence in newcomers]
        try:
            tokens = self._runner.prefill(
                seq_ids,
                [sequence.request.prompt_token_ids for sequence in newcomers],
                [sequence.request.params for sequence in newcomers],
            )
        except Exception:
            logger.exception("prefill of %d sequences failed; aborting them", len(newcomers))
            for sequence in newcomers:
                self._finish(sequence, FinishReason.ABORT)
            return 0
        now = self._clock()
        for sequence, token in zip(newcomers, tokens, strict=True):
            self._accept_token(sequence, token, now)
        return sum(sequence.prompt_tokens for sequence in newcomers)

    def _decode(self) -> int:
        if self._finished_rows:
            # Rows that finished at their prefill leave before the decode, not after it.
            self._runner.release(self._finished_rows)
            self._finished_rows = []
        if not self._running:
            return 0
        try:
            seq_ids, tokens = self._runner.decode()
        except Exception:
            logger.exception(
                "decode step of %d sequences failed; aborting them", len(self._running)
            )
            self._abort_running(FinishReason.ABORT)
            self._runner.reset()
            self._chunking = None
            return 0
        now = self._clock()
        running = self._running
        for seq_id, token in zip(seq_ids, tokens, strict=True):
            self._accept_token(running[seq_id], token, now)
        return len(seq_ids)

    def _accept_token(self, sequence: _Sequence, token: int, now: float) -> None:
        if sequence.state is not _State.RUNNING:
            return
        sequence.generated += 1
        sequence.new_tokens.append(token)
        if sequence.first_token_at is None:
            sequence.first_token_at = now
        elif sequence.last_token_at is not None:
            sequence.inter_token_latencies.append(now - sequence.last_token_at)
        sequence.last_token_at = now
        if token in sequence.stop_ids:
            self._finish(sequence, FinishReason.STOP, hidden_tail=1)
        elif sequence.generated >= sequence.max_tokens:
            self._finish(sequence, FinishReason.LENGTH)
        else:
            self._queue_event(sequence, None)

    def _apply_cancels(self) -> None:
        while self._cancels:
            sequence = self._cancels.popleft()
            reason = sequence.cancel_reason
            if reason is not None:
                self._finish(sequence, reason, completion_tokens=sequence.cancel_completion_tokens)

    def _expire(self, now: float) -> None:
        for sequence in [s for s in self._running.values() if s.deadline_passed(now)]:
            self._finish(sequence, FinishReason.TIMEOUT)
        if now - self._last_deadline_scan < _DEADLINE_SCAN_INTERVAL_S:
            return
        self._last_deadline_scan = now
        with self._lock:
            expired = [entry[2] for entry in self._waiting if entry[2].state is _State.WAITING]
        for sequence in expired:
            if sequence.deadline_passed(now):
                self._finish(sequence, FinishReason.TIMEOUT)

    def _abort_running(self, reason: FinishReason) -> None:
        for sequence in list(self._running.values()):
            self._finish(sequence, reason)

    def _abort_all(self, reason: FinishReason) -> None:
        self._abort_running(reason)
        with self._lock:
            queued = [entry[2] for entry in self._waiting]
        for sequence in queued:
            self._finish(sequence, reason)
        self._runner.reset()
        self._finished_rows = []
        self._chunking = None
        self._running_count = 0
        self._kv_tokens = 0

    def _finish(
        self,
        sequence: _Sequence,
        reason: FinishReason,
        hidden_tail: int = 0,
        completion_tokens: int | None = None,
    ) -> None:
        if sequence.state is _State.FINISHED:
            return
        if sequence.state is _State.RUNNING:
            self._running.pop(sequence.seq_id, None)
            self._finished_rows.append(sequence.seq_id)
        else:
            with self._lock:
                self._waiting_count -= 1
                self._waiting_tokens -= sequence.prompt_tokens
        sequence.state = _State.FINISHED
        if completion_tokens is not None:
            sequence.generated = min(sequence.generated, completion_tokens)
        self._queue_event(sequence, reason, hidden_tail)
        now = self._clock()
        e2e = now - sequence.arrival
        self._mean_latency_s = (
            e2e if not self._mean_latency_s else 0.9 * self._mean_latency_s + 0.1 * e2e
        )
        admitted = sequence.admitted_at if sequence.admitted_at is not None else now
        stats = RequestStats(
            request_id=sequence.request.request_id,
            finish_reason=reason,
            prompt_tokens=sequence.prompt_tokens,
            completion_tokens=sequence.generated,
            queue_time_s=max(0.0, admitted - sequence.arrival),
            time_to_first_token_s=(
                None
                if sequence.first_token_at is None
                else sequence.first_token_at - sequence.arrival
            ),
            inter_token_latencies_s=tuple(sequence.inter_token_latencies),
            e2e_latency_s=e2e,
        )
        self._notify(lambda observer: observer.on_request_finished(stats))

    def _queue_event(
        self, sequence: _Sequence, reason: FinishReason | None, hidden_tail: int = 0
    ) -> None:
        event = _Event(tuple(sequence.new_tokens), sequence.generated, reason, hidden_tail)
        sequence.new_tokens = []
        self._outbox.setdefault(sequence.loop, []).append((sequence, event))

    def _flush(self) -> None:
        """Hand this step's events to the event loops: one thread-safe call per loop."""
        outbox, self._outbox = self._outbox, {}
        for loop, events in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, events)
            except RuntimeError:
                logger.debug("event loop closed; dropping %d stream events", len(events))

    def _notify(self, call: Callable[[EngineObserver], None]) -> None:
        if self._observer is None:
            return
        try:
            call(self._observer)
        except Exception:
            logger.exception("engine observer failed")


def _deliver(events: list[tuple[_Sequence, _Event]]) -> None:
    for sequence, event in events:
        sequence.queue.put_nowait(event)


class _GenerationStream:
    """What `generate()` returns: detokenises, applies stop strings, cancels on close."""

    def __init__(
        self,
        engine: ContinuousBatchingEngine,
        sequence: _Sequence,
        codec: TextCodec,
        stops: Sequence[str],
    ) -> None:
        self._engine = engine
        self._sequence = sequence
        self._detokenizer = IncrementalDetokenizer(codec, sequence.request.prompt_token_ids)
        self._stops = StopStringMatcher(stops)
        self._pending_ids: list[int] = []
        self._done = False
        # A stream dropped without being closed must not keep generating for nobody.
        self._finalizer = weakref.finalize(
            self, engine.cancel, sequence, FinishReason.CANCELLED, None
        )

    def __aiter__(self) -> _GenerationStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        while not self._done:
            try:
                event = await self._sequence.queue.get()
            except asyncio.CancelledError:
                self._close(FinishReason.CANCELLED)
                raise
            events = [event]
            while not self._sequence.queue.empty():
                events.append(self._sequence.queue.get_nowait())
            delta = self._to_delta(events)
            if delta is not None:
                return delta
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._close(FinishReason.CANCELLED)

    def _close(self, reason: FinishReason, completion_tokens: int | None = None) -> None:
        if self._done:
            return
        self._done = True
        self._finalizer.detach()
        self._engine.cancel(self._sequence, reason, completion_tokens)

    def _to_delta(self, events: list[_Event]) -> GenerationDelta | None:
        finish: FinishReason | None = None
        hidden = 0
        completion_tokens = 0
        ids: list[int] = []
        for event in events:
            ids.extend(event.token_ids)
            completion_tokens = event.completion_tokens
            if event.finish_reason is not None:
                finish, hidden = event.finish_reason, event.hidden_tail
                break
        text, stopped = self._stops.feed(self._detokenizer.add(ids[: len(ids) - hidden]))
        self._pending_ids.extend(ids)
        if stopped:
            finish = FinishReason.STOP
            self._close(FinishReason.STOP, completion_tokens)
        elif finish is not None:
            text += self._stops.flush()
            self._done = True
            self._finalizer.detach()
        elif not text:
            return None  # nothing printable yet (a partial character or a possible stop string)
        token_ids, self._pending_ids = tuple(self._pending_ids), []
        return GenerationDelta(
            text=text,
            token_ids=token_ids,
            prompt_tokens=self._sequence.prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish,
        )

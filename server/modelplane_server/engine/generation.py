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

The runner behind the `StepRunner` protocol (`step_runner`) does the torch work
(`model.causal_lm.CausalLMRunner`); tests use a fake one. The waiting queue (`waiting_queue`), a
request's book-keeping (`sequence`) and the stream (`stream`) have their own modules.

Documented choices:

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
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from modelplane_server.engine.contract import (
    EngineObserver,
    EngineStats,
    FinishReason,
    GenerationConfig,
    GenerationRequest,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    RequestStats,
    SampledLogprob,
    SamplingParams,
    StepStats,
)
from modelplane_server.engine.sequence import GenerationSequence, SequenceState
from modelplane_server.engine.step_runner import StepRunner, TextCodec
from modelplane_server.engine.stream import GenerationStream, Outbox
from modelplane_server.engine.waiting_queue import WaitingQueue

logger = logging.getLogger(__name__)

_RECENT_STEPS = 64
# How often the step thread looks for expired queue deadlines; they need not be exact to the ms.
_DEADLINE_SCAN_INTERVAL_S = 0.05
_IDLE_WAIT_S = 1.0
# The smallest prefill chunk, so a long prompt progresses even when decode rows use the budget.
_MIN_CHUNK = 64


def validate_params(params: SamplingParams, vocab_size: int) -> None:
    if params.max_tokens < 1:
        raise InvalidRequestError("max_tokens must be at least 1")
    if params.temperature < 0:
        raise InvalidRequestError("temperature must not be negative")
    if not 0 < params.top_p <= 1:
        raise InvalidRequestError("top_p must be in (0, 1]")
    if params.top_k < 0:
        raise InvalidRequestError("top_k must not be negative")
    if not 0 <= params.min_tokens <= params.max_tokens:
        raise InvalidRequestError("min_tokens must be in [0, max_tokens]", "min_tokens")
    if params.repetition_penalty <= 0:
        raise InvalidRequestError("repetition_penalty must be positive", "repetition_penalty")
    if any(not 0 <= token < vocab_size for token, _ in params.logit_bias):
        raise InvalidRequestError(
            f"logit_bias holds a token id outside this model's vocabulary [0, {vocab_size})",
            "logit_bias",
        )


class ContinuousBatchingEngine:
    """`contract.GenerationEngine` over a `StepRunner`: continuous batching with one step thread."""

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
        self._waiting = WaitingQueue(config.max_queue, config.max_queue_tokens)
        self._draining = False
        self._abort = False
        self._cancels: collections.deque[GenerationSequence] = collections.deque()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._running: dict[int, GenerationSequence] = {}
        self._running_count = 0
        self._kv_tokens = 0  # prompt + generated tokens of the running sequences
        self._steps_total = 0
        self._last_step: float | None = None
        self._recent_batch_sizes: tuple[int, ...] = ()
        self._mean_latency_s = 0.0
        self._last_deadline_scan = 0.0
        self._outbox = Outbox()
        self._finished_rows: list[int] = []
        self._chunking: GenerationSequence | None = (
            None  # the one long prompt being prefilled in chunks
        )

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
        self._waiting.set_accepting(True)
        self._thread.start()

    async def stop(self, drain_timeout_s: float) -> None:
        self._waiting.set_accepting(False)
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

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Admit a request or raise an `EngineError` at once; then stream it (see contract.py).

        Call it on the event loop that will consume the stream: deltas are delivered to it.
        """
        params = request.params
        vocab_size = self._codec.vocab_size
        validate_params(params, vocab_size)
        prompt_tokens = len(request.prompt_token_ids)
        context = self.context_length
        if prompt_tokens == 0:
            raise InvalidRequestError("the prompt is empty")
        if any(not 0 <= token < vocab_size for token in request.prompt_token_ids):
            raise InvalidRequestError(
                f"the prompt holds a token id outside this model's vocabulary [0, {vocab_size})"
            )
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
        sequence = GenerationSequence(
            next(self._ids),
            request,
            min(params.max_tokens, context - prompt_tokens),
            stop_ids,
            loop,
        )
        reason, message, waiting = self._waiting.push(sequence)
        if reason:
            self._notify(lambda observer: observer.on_rejected(reason))
            raise QueueFullError(
                f"the queue is full: {message}", retry_after_s=self._retry_after(waiting)
            )
        self._wakeup.set()
        return GenerationStream(sequence, self._codec, params.stop, self.cancel)

    def _retry_after(self, waiting: int) -> float:
        """Roughly when the queue has room: the queue's worth of batches at the recent latency."""
        batches = waiting / max(self._config.max_batch_size, 1)
        return float(min(60.0, max(1.0, batches * self._mean_latency_s)))

    def cancel(
        self, sequence: GenerationSequence, reason: FinishReason, completion_tokens: int | None
    ) -> None:
        """End a sequence from any thread (consumer gone, stop string found) at the next step."""
        if sequence.cancel_reason is not None or sequence.state is SequenceState.FINISHED:
            return
        sequence.cancel_completion_tokens = completion_tokens
        sequence.cancel_reason = reason
        self._cancels.append(sequence)
        self._wakeup.set()

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=self._waiting.count,
            running=self._running_count,
            waiting_prompt_tokens=self._waiting.prompt_tokens,
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
                    self._outbox.flush()
                except Exception:
                    logger.exception("aborting after a failed step failed too")

    def _iterate(self) -> bool:
        """One step; False when the thread should exit."""
        now = self._clock()
        self._apply_cancels()
        self._expire(now)
        if self._abort:
            self._abort_all(FinishReason.ABORT)
            self._outbox.flush()
            return False
        newcomers = self._admit()
        self._running_count = len(self._running) + len(newcomers)
        if not newcomers and not self._running:
            self._outbox.flush()
            if self._draining and not self._waiting.count:
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
            self._outbox.flush()
        decode_tokens = self._decode() if self._running else 0
        if self._finished_rows:
            self._runner.release(self._finished_rows)
            self._finished_rows = []
        finished = self._clock()
        self._running_count = len(self._running)
        self._kv_tokens = sum(seq.prompt_tokens + seq.generated for seq in self._running.values())
        self._outbox.flush()
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

    def _admit(self) -> list[GenerationSequence]:
        config = self._config
        admitted, chunked = self._waiting.admit(
            budget=config.max_batch_tokens - len(self._running),
            free_rows=config.max_batch_size - len(self._running),
            chunking=self._chunking is not None,
        )
        if chunked is not None:
            # Too long for this step: prefill it in chunks over the next steps, so the running
            # rows keep decoding and no step exceeds the budget.
            chunked.admitted_at = self._clock()
            self._running[chunked.seq_id] = chunked
            self._chunking = chunked
        return admitted

    def _prefill_chunk(self, prefill_tokens: int) -> int:
        sequence = self._chunking
        assert sequence is not None
        if sequence.state is not SequenceState.RUNNING:  # cancelled or timed out meanwhile
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
            logprobs = self._runner.take_logprobs()
            self._accept_token(sequence, token, self._clock(), logprobs.get(sequence.seq_id))
        return end - start

    def _prefill(self, newcomers: list[GenerationSequence], started: float) -> int:
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
        logprobs = self._runner.take_logprobs()
        for sequence, token in zip(newcomers, tokens, strict=True):
            self._accept_token(sequence, token, now, logprobs.get(sequence.seq_id))
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
        logprobs = self._runner.take_logprobs()
        for seq_id, token in zip(seq_ids, tokens, strict=True):
            self._accept_token(running[seq_id], token, now, logprobs.get(seq_id))
        return len(seq_ids)

    def _accept_token(
        self,
        sequence: GenerationSequence,
        token: int,
        now: float,
        logprob: SampledLogprob | None = None,
    ) -> None:
        if sequence.state is not SequenceState.RUNNING:
            return
        sequence.generated += 1
        sequence.new_tokens.append(token)
        if logprob is not None:
            sequence.new_logprobs.append(logprob)
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
        for sequence in self._waiting.waiting():
            if sequence.deadline_passed(now):
                self._finish(sequence, FinishReason.TIMEOUT)

    def _abort_running(self, reason: FinishReason) -> None:
        for sequence in list(self._running.values()):
            self._finish(sequence, reason)

    def _abort_all(self, reason: FinishReason) -> None:
        self._abort_running(reason)
        for sequence in self._waiting.queued():
            self._finish(sequence, reason)
        self._runner.reset()
        self._finished_rows = []
        self._chunking = None
        self._running_count = 0
        self._kv_tokens = 0

    def _finish(
        self,
        sequence: GenerationSequence,
        reason: FinishReason,
        hidden_tail: int = 0,
        completion_tokens: int | None = None,
    ) -> None:
        if sequence.state is SequenceState.FINISHED:
            return
        if sequence.state is SequenceState.RUNNING:
            self._running.pop(sequence.seq_id, None)
            self._finished_rows.append(sequence.seq_id)
        else:
            self._waiting.remove(sequence)
        sequence.state = SequenceState.FINISHED
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
        self, sequence: GenerationSequence, reason: FinishReason | None, hidden_tail: int = 0
    ) -> None:
        self._outbox.add(sequence, sequence.take_event(reason, hidden_tail))

    def _notify(self, call: Callable[[EngineObserver], None]) -> None:
        if self._observer is None:
            return
        try:
            call(self._observer)
        except Exception:
            logger.exception("engine observer failed")

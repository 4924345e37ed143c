"""The generation engine's step thread: each step applies cancellations and deadlines, admits
from the waiting queue within the token budget, prefills (whole or in chunks), decodes one token for
every running row, finishes what ended, and hands the step's events to the streams. Everything here
runs on that one thread, except what `WaitingQueue` and the cancel queue guard."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping

from modelplane_server.engine.contract import (
    EngineObserver,
    FinishReason,
    GenerationConfig,
    RequestStats,
    SampledLogprob,
    StepStats,
)
from modelplane_server.engine.fair_share import TenantPolicy
from modelplane_server.engine.sequence import GenerationSequence, SequenceState
from modelplane_server.engine.step_runner import StepRunner
from modelplane_server.engine.stream import Outbox
from modelplane_server.engine.waiting_queue import WaitingQueue

logger = logging.getLogger(__name__)

_RECENT_STEPS = 64
# How often the step thread looks for expired queue deadlines; they need not be exact to the ms.
_DEADLINE_SCAN_INTERVAL_S = 0.05
_IDLE_WAIT_S = 1.0
# The smallest prefill chunk, so a long prompt progresses even when decode rows use the budget.
_MIN_CHUNK = 64


class StepLoop:
    """The running batch and the step thread's state; the engine reads its counters for stats."""

    def __init__(
        self,
        runner: StepRunner,
        config: GenerationConfig,
        observer: EngineObserver | None,
        clock: Callable[[], float] = time.monotonic,
        tenants: Mapping[str, TenantPolicy] | None = None,
    ) -> None:
        self._runner = runner
        self._config = config
        self._observer = observer
        self._clock = clock
        self.waiting = WaitingQueue(config.max_queue, config.max_queue_tokens, tenants)
        # Sequences to end at the next step; appended from any thread (`engine.cancel`).
        self.cancels: collections.deque[GenerationSequence] = collections.deque()
        self.wakeup = threading.Event()
        self.draining = False
        self.abort = False
        self._running: dict[int, GenerationSequence] = {}
        self.running_count = 0
        self.kv_tokens = 0  # prompt + generated tokens of the running sequences
        self.steps_total = 0
        self.last_step: float | None = None
        self.recent_batch_sizes: tuple[int, ...] = ()
        self.mean_latency_s = 0.0
        self._last_deadline_scan = 0.0
        self._outbox = Outbox()
        self._finished_rows: list[int] = []
        self._chunking: GenerationSequence | None = None  # the long prompt prefilled in chunks

    def run(self) -> None:
        """The step thread: steps until stopped or drained."""
        while True:
            try:
                if not self.iterate():
                    return
            except Exception:
                # A bug in the loop itself, not a failed forward: end all in flight, keep serving.
                logger.exception("generation step loop failed; aborting in-flight requests")
                try:
                    self._abort_all(FinishReason.ABORT)
                    self._outbox.flush()
                except Exception:
                    logger.exception("aborting after a failed step failed too")

    def iterate(self) -> bool:
        """One step; False when the thread should exit."""
        now = self._clock()
        self._apply_cancels()
        self._expire(now)
        if self.abort:
            self._abort_all(FinishReason.ABORT)
            self._outbox.flush()
            return False
        newcomers = self._admit()
        self.running_count = len(self._running) + len(newcomers)
        if not newcomers and not self._running:
            self._outbox.flush()
            if self.draining and not self.waiting.count:
                return False
            # Idle: nothing runs, so no deadline can pass unnoticed; generate() and stop() wake us.
            self.wakeup.wait(_IDLE_WAIT_S)
            self.wakeup.clear()
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
        self.running_count = len(self._running)
        self.kv_tokens = sum(seq.prompt_tokens + seq.generated for seq in self._running.values())
        self._outbox.flush()
        batch_size = max(len(newcomers) + chunked, decode_tokens)
        self.steps_total += 1
        self.last_step = finished
        self.recent_batch_sizes = (*self.recent_batch_sizes[-(_RECENT_STEPS - 1) :], batch_size)
        stats = StepStats(
            batch_size=batch_size,
            prefill_tokens=prefill_tokens,
            decode_tokens=decode_tokens,
            max_batch_size=self._config.max_batch_size,
            duration_s=finished - started,
        )
        self.notify(lambda observer: observer.on_step(stats))
        return True

    def _prefill_budget(self, prefill_tokens: int) -> int:
        """Prompt tokens this step may still prefill: what the step's token budget leaves after
        one decode token per running row, and at most `max_prefill_tokens` in all, so a burst of
        newcomers is spread over steps instead of stalling every running stream for one long one."""
        config = self._config
        return min(
            config.max_batch_tokens - len(self._running) - prefill_tokens,
            config.max_prefill_tokens - prefill_tokens,
        )

    def _cached_tokens(self, sequence: GenerationSequence) -> int:
        return self._runner.cached_prefix_tokens(sequence.request.prompt_token_ids)

    def _admit(self) -> list[GenerationSequence]:
        config = self._config
        admitted, chunked = self.waiting.admit(
            budget=self._prefill_budget(0),
            free_rows=config.max_batch_size - len(self._running),
            chunking=self._chunking is not None,
            cached_tokens=self._cached_tokens,
        )
        if chunked is not None:
            # Too long for this step: prefill it in chunks over the next steps, so the running
            # rows keep decoding and no step exceeds the budget. Its cached prefix is skipped.
            chunked.prefilled = self._cached_tokens(chunked)
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
        start = sequence.prefilled
        smallest = min(_MIN_CHUNK, self._config.max_prefill_tokens)
        end = min(
            sequence.prompt_tokens, start + max(self._prefill_budget(prefill_tokens), smallest)
        )
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
        # What the step computes: the prompts less their cached prefixes (looked up before the
        # prefill, which may add blocks).
        computed = sum(
            sequence.prompt_tokens - self._cached_tokens(sequence) for sequence in newcomers
        )
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
        return computed

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
        while self.cancels:
            sequence = self.cancels.popleft()
            reason = sequence.cancel_reason
            if reason is not None:
                self._finish(sequence, reason, completion_tokens=sequence.cancel_completion_tokens)

    def _expire(self, now: float) -> None:
        for sequence in [s for s in self._running.values() if s.deadline_passed(now)]:
            self._finish(sequence, FinishReason.TIMEOUT)
        if now - self._last_deadline_scan < _DEADLINE_SCAN_INTERVAL_S:
            return
        self._last_deadline_scan = now
        for sequence in self.waiting.waiting():
            if sequence.deadline_passed(now):
                self._finish(sequence, FinishReason.TIMEOUT)

    def _abort_running(self, reason: FinishReason) -> None:
        for sequence in list(self._running.values()):
            self._finish(sequence, reason)

    def _abort_all(self, reason: FinishReason) -> None:
        self._abort_running(reason)
        for sequence in self.waiting.queued():
            self._finish(sequence, reason)
        self._runner.reset()
        self._finished_rows = []
        self._chunking = None
        self.running_count = 0
        self.kv_tokens = 0

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
            self.waiting.remove(sequence)
        sequence.state = SequenceState.FINISHED
        if completion_tokens is not None:
            sequence.generated = min(sequence.generated, completion_tokens)
        self._queue_event(sequence, reason, hidden_tail)
        now = self._clock()
        e2e = now - sequence.arrival
        self.mean_latency_s = (
            e2e if not self.mean_latency_s else 0.9 * self.mean_latency_s + 0.1 * e2e
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
            tenant=sequence.request.tenant,
        )
        self.notify(lambda observer: observer.on_request_finished(stats))

    def _queue_event(
        self, sequence: GenerationSequence, reason: FinishReason | None, hidden_tail: int = 0
    ) -> None:
        self._outbox.add(sequence, sequence.take_event(reason, hidden_tail))

    def notify(self, call: Callable[[EngineObserver], None]) -> None:
        if self._observer is None:
            return
        try:
            call(self._observer)
        except Exception:
            logger.exception("engine observer failed")

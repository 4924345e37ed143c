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
(`model.causal_lm.CausalLMRunner`); tests use a fake one. The step thread (`step_loop`), the waiting
queue (`waiting_queue`), a request's book-keeping (`sequence`) and the stream (`stream`) have their
own modules; this one admits requests, starts and stops the thread, and reports stats.

Documented choices:

- A prompt must leave room for one generated token: `len(prompt) >= context_length` is rejected with
  `PromptTooLongError` (its `limit` is the context length); otherwise `max_tokens` is capped to what
  fits and the cap ends with LENGTH.
- A step prefills at most `max_prefill_tokens` prompt tokens (newcomers and a chunk together), so
  a burst of arrivals is spread over several steps and the running streams' inter-token latency
  stays bounded. Tokens the prefix cache holds are not counted: they are not computed.
- A prompt that does not fit the step's remaining budget is prefilled in chunks over several steps
  (one such prompt at a time, chunks of at least 64 tokens) while the running rows keep decoding,
  so a long prompt neither waits forever nor stalls every stream for one huge step.
- The EOS or stop token that ends a sequence counts in `completion_tokens` and `token_ids` but never
  appears in the text.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from modelplane_server.engine.contract import (
    EngineObserver,
    EngineStats,
    FinishReason,
    GenerationConfig,
    GenerationRequest,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
    TenantQueueFullError,
)
from modelplane_server.engine.fair_share import TenantPolicy
from modelplane_server.engine.sequence import GenerationSequence, SequenceState
from modelplane_server.engine.step_loop import StepLoop
from modelplane_server.engine.step_runner import StepRunner, TextCodec
from modelplane_server.engine.stream import GenerationStream

logger = logging.getLogger(__name__)


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
        tenants: Mapping[str, TenantPolicy] | None = None,
    ) -> None:
        self._runner = runner
        self._codec = codec
        self._config = config
        self._eos_token_ids = frozenset(eos_token_ids)
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._steps = StepLoop(runner, config, observer, clock, tenants)

    # --- Tokenizing ---------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._codec.model_id

    @property
    def context_length(self) -> int:
        return self._codec.context_length

    def encode(self, text: str) -> list[int]:
        return self._codec.encode(text)

    @property
    def chat_template_renders_tools(self) -> bool:
        return self._codec.chat_template_renders_tools

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        return self._codec.apply_chat_template(messages, tools)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._steps.run, name="generation-step", daemon=True)
        self._steps.waiting.set_accepting(True)
        self._thread.start()

    async def stop(self, drain_timeout_s: float) -> None:
        self._steps.waiting.set_accepting(False)
        thread = self._thread
        if thread is None:
            return
        self._steps.draining = True
        self._steps.wakeup.set()
        await asyncio.to_thread(thread.join, max(drain_timeout_s, 0.0))
        if thread.is_alive():
            self._steps.abort = True
            self._steps.wakeup.set()
            await asyncio.to_thread(thread.join)

    # --- admission (event loop thread) --------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Admit a request or raise an `EngineError` at once; then stream it (see contract.py).

        Call it on the event loop that will consume the stream: deltas are delivered to it.
        """
        params = request.params
        vocab_size = self._codec.vocab_size
        validate_params(params, vocab_size)
        if params.grammar is not None:
            error = self._runner.grammar_error(params.grammar)
            if error is not None:
                raise InvalidRequestError(
                    f"the output constraint cannot be compiled: {error}", "grammar"
                )
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
        refusal = self._steps.waiting.push(sequence)
        if refusal is not None:
            tenant = request.tenant
            self._steps.notify(lambda observer: observer.on_rejected(refusal.reason, tenant))
            retry_after_s = self._retry_after(refusal.waiting)
            if refusal.tenant_limit:
                raise TenantQueueFullError(refusal.message, retry_after_s)
            raise QueueFullError(f"the server's queue is full: {refusal.message}", retry_after_s)
        self._steps.wakeup.set()
        return GenerationStream(sequence, self._codec, params.stop, self.cancel)

    def _retry_after(self, waiting: int) -> float:
        """Roughly when the queue has room: the queue's worth of batches at the recent latency."""
        batches = waiting / max(self._config.max_batch_size, 1)
        return float(min(60.0, max(1.0, batches * self._steps.mean_latency_s)))

    def cancel(
        self, sequence: GenerationSequence, reason: FinishReason, completion_tokens: int | None
    ) -> None:
        """End a sequence from any thread (consumer gone, stop string found) at the next step."""
        if sequence.cancel_reason is not None or sequence.state is SequenceState.FINISHED:
            return
        sequence.cancel_completion_tokens = completion_tokens
        sequence.cancel_reason = reason
        self._steps.cancels.append(sequence)
        self._steps.wakeup.set()

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=self._steps.waiting.count,
            running=self._steps.running_count,
            waiting_prompt_tokens=self._steps.waiting.prompt_tokens,
            steps_total=self._steps.steps_total,
            last_step_monotonic=self._steps.last_step,
            max_batch_size=self._config.max_batch_size,
            recent_batch_sizes=self._steps.recent_batch_sizes,
            kv_cache_tokens=self._steps.kv_tokens,
            kv_cache_capacity_tokens=self._config.max_batch_size * self.context_length,
            prefix_cache=self._runner.prefix_cache_stats(),
            waiting_by_tenant=tuple(sorted(self._steps.waiting.waiting_by_tenant().items())),
        )

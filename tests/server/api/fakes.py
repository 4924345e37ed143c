"""Fake engines implementing the engine contract's protocols, for fast, deterministic HTTP tests.

`FakeGenerationEngine` runs a real (tiny) continuous-batching loop on the event loop: a bounded
waiting queue, `max_batch_size` running slots, one token per running sequence per step, deadlines,
cancellation on iterator close, drain on `stop()`, and the observer calls. Tests can pause the loop
(`pause()`), which is how they fill the queue or make liveness see a stall. One token is one
character of the prompt, so prompt lengths are easy to reason about; the generated text cycles
through `WORDS`, one word per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from modelplane_server.engine.contract import (
    EngineObserver,
    EngineStats,
    FinishReason,
    GenerationDelta,
    GenerationRequest,
    NotAcceptingError,
    PromptTooLongError,
    QueueFullError,
    RequestStats,
    StepStats,
)

WORDS = ("Paris", "is", "the", "capital", "of", "France", "and", "a", "fine", "city")


@dataclass
class _Sequence:
    request: GenerationRequest
    deltas: asyncio.Queue[GenerationDelta] = field(default_factory=asyncio.Queue)
    generated: int = 0
    text: str = ""
    finished: bool = False
    admitted_at: float | None = None
    token_times: list[float] = field(default_factory=list)


class FakeGenerationEngine:
    def __init__(
        self,
        *,
        model_id: str = "fake-llm",
        context_length: int = 256,
        max_batch_size: int = 4,
        max_queue: int = 16,
        step_delay_s: float = 0.0,
        observer: EngineObserver | None = None,
    ) -> None:
        self._model_id = model_id
        self._context_length = context_length
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.step_delay_s = step_delay_s
        self.observer = observer
        self.waiting: deque[_Sequence] = deque()
        self.running: dict[str, _Sequence] = {}
        self.steps_total = 0
        self.last_step: float | None = None
        self.submitted: list[GenerationRequest] = []
        self.cancelled: list[str] = []
        self.accepting = False
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set whenever nothing is waiting or running
        self._idle.set()
        self._loop_task: asyncio.Task[None] | None = None

    # --- Tokenizing ---------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def context_length(self) -> int:
        return self._context_length

    def encode(self, text: str) -> list[int]:
        return [ord(character) for character in text]

    @property
    def chat_template_renders_tools(self) -> bool:
        return False

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], tools: object = None
    ) -> list[int]:
        rendered = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return self.encode(rendered)

    # --- control for tests --------------------------------------------------------------------

    def pause(self) -> None:
        self._unpaused.clear()

    def resume(self) -> None:
        self._unpaused.set()

    # --- GenerationEngine ---------------------------------------------------------------------

    async def start(self) -> None:
        self.accepting = True
        self._loop_task = asyncio.get_running_loop().create_task(self._step_loop())

    async def stop(self, drain_timeout_s: float) -> None:
        self.accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        for sequence in [*self.waiting, *self.running.values()]:
            self._finish(sequence, FinishReason.ABORT)
        self.waiting.clear()
        self.running.clear()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        if not self.accepting:
            raise NotAcceptingError("the engine is stopped")
        needed = len(request.prompt_token_ids) + request.params.max_tokens
        if needed > self._context_length:
            raise PromptTooLongError("prompt plus max_tokens is too long", self._context_length)
        if len(self.waiting) >= self.max_queue:
            if self.observer is not None:
                self.observer.on_rejected("queue_full")
            raise QueueFullError(f"{len(self.waiting)} requests waiting", retry_after_s=2.2)
        sequence = _Sequence(request)
        self.submitted.append(request)
        self.waiting.append(sequence)
        self._idle.clear()
        self._wake.set()
        return self._stream(sequence)

    async def _stream(self, sequence: _Sequence) -> AsyncIterator[GenerationDelta]:
        try:
            while True:
                delta = await sequence.deltas.get()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if not sequence.finished:
                self.cancelled.append(sequence.request.request_id)
                self._finish(sequence, FinishReason.CANCELLED)
                with contextlib.suppress(ValueError):
                    self.waiting.remove(sequence)
                self.running.pop(sequence.request.request_id, None)
                if not (self.waiting or self.running):
                    self._idle.set()

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=len(self.waiting),
            running=len(self.running),
            waiting_prompt_tokens=sum(len(s.request.prompt_token_ids) for s in self.waiting),
            steps_total=self.steps_total,
            last_step_monotonic=self.last_step,
            max_batch_size=self.max_batch_size,
            recent_batch_sizes=(),
        )

    # --- the loop -----------------------------------------------------------------------------

    def _finish(self, sequence: _Sequence, reason: FinishReason, text: str = "") -> None:
        if sequence.finished:
            return
        sequence.finished = True
        now = time.monotonic()
        sequence.deltas.put_nowait(
            GenerationDelta(
                text=text,
                token_ids=(),
                prompt_tokens=len(sequence.request.prompt_token_ids),
                completion_tokens=sequence.generated,
                finish_reason=reason,
            )
        )
        if self.observer is not None:
            arrival = sequence.request.arrival_time
            times = sequence.token_times
            self.observer.on_request_finished(
                RequestStats(
                    request_id=sequence.request.request_id,
                    finish_reason=reason,
                    prompt_tokens=len(sequence.request.prompt_token_ids),
                    completion_tokens=sequence.generated,
                    queue_time_s=(sequence.admitted_at or now) - arrival,
                    time_to_first_token_s=times[0] - arrival if times else None,
                    inter_token_latencies_s=[b - a for a, b in itertools.pairwise(times)],
                    e2e_latency_s=now - arrival,
                )
            )

    async def _step_loop(self) -> None:
        while True:
            if not (self.waiting or self.running):
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            await self._unpaused.wait()
            if self.step_delay_s:
                await asyncio.sleep(self.step_delay_s)
            else:
                await asyncio.sleep(0)
            self._step()

    def _step(self) -> None:
        started = time.monotonic()
        for sequence in [s for s in self.waiting if _expired(s.request.queue_deadline, started)]:
            self.waiting.remove(sequence)
            self._finish(sequence, FinishReason.TIMEOUT)
        prefill = 0
        while self.waiting and len(self.running) < self.max_batch_size:
            sequence = self.waiting.popleft()
            sequence.admitted_at = started
            prefill += len(sequence.request.prompt_token_ids)
            self.running[sequence.request.request_id] = sequence
        if not self.running:
            return
        batch = len(self.running)
        for request_id, sequence in list(self.running.items()):
            if _expired(sequence.request.deadline, started):
                del self.running[request_id]
                self._finish(sequence, FinishReason.TIMEOUT)
                continue
            self._advance(sequence)
            if sequence.finished:
                del self.running[request_id]
        self.steps_total += 1
        self.last_step = time.monotonic()
        if self.observer is not None:
            self.observer.on_step(
                StepStats(batch, prefill, batch, self.max_batch_size, self.last_step - started)
            )

    def _advance(self, sequence: _Sequence) -> None:
        params = sequence.request.params
        word = WORDS[sequence.generated % len(WORDS)]
        piece = word if sequence.generated == 0 else " " + word
        sequence.generated += 1
        sequence.token_times.append(time.monotonic())
        if word in params.stop:
            self._finish(sequence, FinishReason.STOP)
            return
        sequence.text += piece
        if sequence.generated >= params.max_tokens:
            self._finish(sequence, FinishReason.LENGTH, text=piece)
            return
        sequence.deltas.put_nowait(
            GenerationDelta(
                text=piece,
                token_ids=(sequence.generated,),
                prompt_tokens=len(sequence.request.prompt_token_ids),
                completion_tokens=sequence.generated,
            )
        )


def _expired(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline


class FakeEmbeddingEngine:
    """Deterministic unit vectors from a hash of each text; one token per word."""

    def __init__(
        self, *, model_id: str = "fake-embed", dimensions: int = 8, max_queue: int = 64
    ) -> None:
        self._model_id = model_id
        self._dimensions = dimensions
        self.max_queue = max_queue
        self.in_flight = 0
        self.gate = asyncio.Event()  # tests clear it to hold embed() calls
        self.gate.set()
        self.cancelled = 0
        self.accepting = False

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def context_length(self) -> int:
        return 128

    async def start(self) -> None:
        self.accepting = True

    async def stop(self, drain_timeout_s: float) -> None:
        self.accepting = False

    def vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        raw = [digest[i] - 127.5 for i in range(self._dimensions)]
        norm = math.sqrt(sum(x * x for x in raw))
        return [x / norm for x in raw]

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        if not self.accepting:
            raise NotAcceptingError("the embedding engine is stopped")
        if self.in_flight >= self.max_queue:
            raise QueueFullError("embedding queue full", retry_after_s=0.3)
        self.in_flight += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return [self.vector(text) for text in texts], sum(len(t.split()) for t in texts)

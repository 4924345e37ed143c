"""From the step thread to the consumer: the outbox that hands a step's events to the event loops,
and the stream `generate()` returns, which detokenises on the event loop, applies stop strings, and
cancels its sequence when closed, cancelled or dropped."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence

from modelplane_server.engine.contract import (
    FinishReason,
    GenerationDelta,
    SampledLogprob,
    TokenLogprob,
)
from modelplane_server.engine.detokenize import IncrementalDetokenizer, StopStringMatcher
from modelplane_server.engine.sequence import GenerationSequence, StreamEvent
from modelplane_server.engine.step_runner import TextCodec

logger = logging.getLogger(__name__)

# Ends a sequence from any thread at the engine's next step: (sequence, reason, completion tokens).
Cancel = Callable[[GenerationSequence, FinishReason, int | None], None]


class Outbox:
    """A step's events for the streams, handed to their event loops in one thread-safe call per
    loop (on the step thread)."""

    def __init__(self) -> None:
        self._events: dict[asyncio.AbstractEventLoop, list[tuple[GenerationSequence, StreamEvent]]]
        self._events = {}

    def add(self, sequence: GenerationSequence, event: StreamEvent) -> None:
        self._events.setdefault(sequence.loop, []).append((sequence, event))

    def flush(self) -> None:
        events_by_loop, self._events = self._events, {}
        for loop, events in events_by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, events)
            except RuntimeError:
                logger.debug("event loop closed; dropping %d stream events", len(events))


def _deliver(events: list[tuple[GenerationSequence, StreamEvent]]) -> None:
    """On the event loop: hand one step's events to their streams."""
    for sequence, event in events:
        sequence.queue.put_nowait(event)


class GenerationStream:
    def __init__(
        self,
        sequence: GenerationSequence,
        codec: TextCodec,
        stops: Sequence[str],
        cancel: Cancel,
    ) -> None:
        self._sequence = sequence
        self._cancel = cancel
        self._detokenizer = IncrementalDetokenizer(codec, sequence.request.prompt_token_ids)
        self._stops = StopStringMatcher(stops)
        self._pending_ids: list[int] = []
        self._codec = codec
        self._pending_logprobs: list[TokenLogprob] = []
        self._done = False
        # A stream dropped without being closed must not keep generating for nobody.
        self._finalizer = weakref.finalize(self, cancel, sequence, FinishReason.CANCELLED, None)

    def __aiter__(self) -> GenerationStream:
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
        self._cancel(self._sequence, reason, completion_tokens)

    def _to_delta(self, events: list[StreamEvent]) -> GenerationDelta | None:
        finish: FinishReason | None = None
        hidden = 0
        completion_tokens = 0
        ids: list[int] = []
        for event in events:
            ids.extend(event.token_ids)
            self._pending_logprobs.extend(
                self._as_text(logprob, token)
                for token, logprob in zip(event.token_ids, event.logprobs, strict=False)
            )
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
        logprobs, self._pending_logprobs = tuple(self._pending_logprobs), []
        return GenerationDelta(
            text=text,
            token_ids=token_ids,
            prompt_tokens=self._sequence.prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish,
            logprobs=logprobs,
        )

    def _as_text(self, logprob: SampledLogprob, token: int) -> TokenLogprob:
        decode = self._codec.decode
        return TokenLogprob(
            decode([token]), logprob.logprob, tuple((decode([t]), v) for t, v in logprob.top)
        )

"""One request inside the generation engine: its state, its counters and timings, and the events
the step thread sends its stream."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass

from modelplane_server.engine.contract import FinishReason, GenerationRequest, SampledLogprob


class SequenceState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class StreamEvent:
    """What the step thread tells a stream: new token ids and, at the end, why it finished."""

    token_ids: tuple[int, ...]
    completion_tokens: int
    finish_reason: FinishReason | None = None
    hidden_tail: int = 0  # trailing ids (EOS / stop id) that count as tokens but are not text
    logprobs: tuple[SampledLogprob, ...] = ()  # one per token id, when the request asked


class GenerationSequence:
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
        self.queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self.state = SequenceState.WAITING
        self.generated = 0
        self.new_tokens: list[int] = []
        self.new_logprobs: list[SampledLogprob] = []
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
        return (
            self.state is SequenceState.WAITING
            and queue_deadline is not None
            and now >= queue_deadline
        )

    def take_event(self, reason: FinishReason | None, hidden_tail: int = 0) -> StreamEvent:
        """The tokens generated since the last event, as the next event."""
        event = StreamEvent(
            tuple(self.new_tokens), self.generated, reason, hidden_tail, tuple(self.new_logprobs)
        )
        self.new_tokens = []
        self.new_logprobs = []
        return event

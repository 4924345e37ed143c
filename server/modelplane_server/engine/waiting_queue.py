"""The generation engine's bounded priority queue of requests waiting for a batch slot.

`generate()` pushes on the event loop thread, the step thread admits, expires and aborts; one lock
guards the heap and its counts (in requests and in prompt tokens, both bounded by the config).
Lower `priority` runs first, then arrival order.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable

from modelplane_server.engine.contract import NotAcceptingError
from modelplane_server.engine.sequence import GenerationSequence, SequenceState


class WaitingQueue:
    def __init__(self, max_requests: int, max_prompt_tokens: int) -> None:
        self._max_requests = max_requests
        self._max_prompt_tokens = max_prompt_tokens
        self._lock = threading.Lock()
        self._heap: list[tuple[int, int, GenerationSequence]] = []
        self._accepting = False
        self.count = 0
        self.prompt_tokens = 0

    def set_accepting(self, accepting: bool) -> None:
        with self._lock:
            self._accepting = accepting

    def push(self, sequence: GenerationSequence) -> tuple[str, str, int]:
        """Queue `sequence`, or say why not: (reason, message, requests waiting), the reason ""
        when it was queued. Raises `NotAcceptingError` when the engine is not accepting."""
        prompt_tokens = sequence.prompt_tokens
        with self._lock:
            if not self._accepting:
                raise NotAcceptingError(
                    "the engine is not accepting requests (draining or not started)"
                )
            if self.count >= self._max_requests:
                reason, message = "queue_full", f"{self.count} requests are waiting"
            elif self.count and self.prompt_tokens + prompt_tokens > self._max_prompt_tokens:
                reason, message = (
                    "queue_tokens_full",
                    f"{self.prompt_tokens} prompt tokens are waiting",
                )
            else:
                reason, message = "", ""
                heapq.heappush(self._heap, (sequence.request.priority, sequence.seq_id, sequence))
                self.count += 1
                self.prompt_tokens += prompt_tokens
            return reason, message, self.count

    def admit(
        self,
        budget: int,
        free_rows: int,
        chunking: bool,
        cached_tokens: Callable[[GenerationSequence], int] = lambda _: 0,
    ) -> tuple[list[GenerationSequence], GenerationSequence | None]:
        """Take the next sequences whose prompts (plus one decode token each, less what the
        prefix cache holds of them) fit `budget`, at most `free_rows`, marking them running.
        When the first that does not fit comes first (nothing admitted, no prompt being
        chunked), it is taken too, as the second result: too long for one step, it is prefilled
        in chunks over the next steps."""
        admitted: list[GenerationSequence] = []
        cost = 0
        with self._lock:
            while self._heap and len(admitted) < free_rows:
                sequence = self._heap[0][2]
                if sequence.state is not SequenceState.WAITING:
                    heapq.heappop(self._heap)  # finished while queued; its counts are already off
                    continue
                # A newcomer costs its prompt plus its first decode token. The runner groups
                # prompts by length, so padding stays small and is not counted.
                cost += sequence.prompt_tokens - cached_tokens(sequence) + 1
                if cost > budget and (admitted or chunking):
                    break
                heapq.heappop(self._heap)
                self.count -= 1
                self.prompt_tokens -= sequence.prompt_tokens
                sequence.state = SequenceState.RUNNING
                if cost > budget:
                    return admitted, sequence
                admitted.append(sequence)
        return admitted, None

    def remove(self, sequence: GenerationSequence) -> None:
        """Take a finished waiting sequence off the counts (its heap entry goes at admission)."""
        with self._lock:
            self.count -= 1
            self.prompt_tokens -= sequence.prompt_tokens

    def waiting(self) -> list[GenerationSequence]:
        with self._lock:
            return [entry[2] for entry in self._heap if entry[2].state is SequenceState.WAITING]

    def queued(self) -> list[GenerationSequence]:
        with self._lock:
            return [entry[2] for entry in self._heap]

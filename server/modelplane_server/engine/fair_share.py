"""Weighted fair sharing of the batch among tenants (API keys' owners), by virtual time.

Start-time fair queuing: every tenant has a virtual time that advances, when one of its requests is
admitted, by that request's cost (prompt tokens plus the most it may generate) divided by the
tenant's share; the backlogged tenant with the lowest virtual time goes next. Two tenants backlogged
with shares 3 and 1 so get three quarters and one quarter of the admitted tokens, and a tenant alone
gets everything, since idle tenants take no turns. A tenant that becomes backlogged starts at the
virtual time of the last admission, not at its own old one: idling banks no credit, so a tenant
cannot save up a burst that starves the others.

Within one tenant, requests run by `priority` (lower first), then in arrival order. Tenants are few
(those the API key file names, plus the default), so their state is kept, never evicted.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from modelplane_server.engine.sequence import GenerationSequence, SequenceState

# Dead heap entries (requests that finished while queued) a tenant's heap may hold beyond its live
# ones before it is rebuilt: pruning only at the head would let cancellations pile up while the
# batch is full (nothing is admitted, so no head is looked at).
_DEAD_SLACK = 64


@dataclass(frozen=True)
class TenantPolicy:
    """A tenant's weight and its own queue limits (0 = only the server's limits apply)."""

    share: int = 1
    max_queue: int = 0  # requests waiting
    max_queue_tokens: int = 0  # prompt tokens waiting


@dataclass
class TenantQueue:
    """One tenant's waiting requests (lazily pruned: a request that finished while queued stays
    in the heap until it surfaces or `FairShare.drop` rebuilds the heap) and its counts, which
    hold only the live ones."""

    policy: TenantPolicy
    heap: list[tuple[int, int, GenerationSequence]] = field(default_factory=list)
    count: int = 0
    prompt_tokens: int = 0
    virtual_time: float = 0.0

    def head(self) -> GenerationSequence | None:
        while self.heap and self.heap[0][2].state is not SequenceState.WAITING:
            heapq.heappop(self.heap)
        return self.heap[0][2] if self.heap else None


class FairShare:
    """The tenants' queues and the virtual clock; not thread-safe (`WaitingQueue` locks)."""

    def __init__(self, policies: dict[str, TenantPolicy]) -> None:
        self._policies = policies
        self.tenants: dict[str, TenantQueue] = {}
        self._virtual_now = 0.0

    def tenant(self, name: str) -> TenantQueue:
        queue = self.tenants.get(name)
        if queue is None:
            queue = TenantQueue(self._policies.get(name, TenantPolicy()))
            self.tenants[name] = queue
        return queue

    def push(self, queue: TenantQueue, sequence: GenerationSequence) -> None:
        if not queue.count:
            queue.virtual_time = max(queue.virtual_time, self._virtual_now)
        heapq.heappush(queue.heap, (sequence.request.priority, sequence.seq_id, sequence))
        queue.count += 1
        queue.prompt_tokens += sequence.prompt_tokens

    def next(self) -> tuple[TenantQueue, GenerationSequence] | None:
        """The head of the backlogged tenant with the lowest virtual time (ties: the earlier
        arrival), without taking it."""
        best: tuple[float, int, TenantQueue, GenerationSequence] | None = None
        for queue in self.tenants.values():
            if not queue.count:
                continue
            sequence = queue.head()
            if sequence is None:
                continue
            key = (queue.virtual_time, sequence.seq_id)
            if best is None or key < best[:2]:
                best = (*key, queue, sequence)
        return None if best is None else (best[2], best[3])

    def take(self, queue: TenantQueue, sequence: GenerationSequence) -> None:
        """Admit `sequence`, the head of `queue`: off the queue, and charge its tenant."""
        heapq.heappop(queue.heap)
        self.forget(queue, sequence)
        self._virtual_now = queue.virtual_time
        cost = sequence.prompt_tokens + sequence.max_tokens
        queue.virtual_time += cost / max(queue.policy.share, 1)

    @staticmethod
    def forget(queue: TenantQueue, sequence: GenerationSequence) -> None:
        queue.count -= 1
        queue.prompt_tokens -= sequence.prompt_tokens

    def drop(self, queue: TenantQueue, sequence: GenerationSequence) -> None:
        """A queued `sequence` finished (cancelled, expired): off the counts now, off the heap
        when it surfaces, or at once when dead entries outnumber the live ones by the slack."""
        self.forget(queue, sequence)
        if len(queue.heap) > 2 * queue.count + _DEAD_SLACK:
            queue.heap = [
                entry
                for entry in queue.heap
                if entry[2] is not sequence and entry[2].state is SequenceState.WAITING
            ]
            heapq.heapify(queue.heap)

"""The generation engine's bounded queue of requests waiting for a batch slot.

`generate()` pushes on the event loop thread, the step thread admits, expires and aborts; one lock
guards the tenants' queues and the counts (in requests and in prompt tokens, bounded by the config
for the whole server and by each tenant's policy for its own). Admission order across tenants is
weighted fair share (`fair_share`); within a tenant, lower `priority` runs first, then arrival.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from modelplane_server.engine.contract import NotAcceptingError
from modelplane_server.engine.fair_share import FairShare, TenantPolicy
from modelplane_server.engine.sequence import GenerationSequence, SequenceState


@dataclass(frozen=True)
class Refusal:
    """Why a request was not queued. `tenant_limit`: its tenant's limit was hit, not the
    server's; `waiting` counts the requests queued ahead under that limit."""

    reason: str
    message: str
    waiting: int
    tenant_limit: bool


class WaitingQueue:
    def __init__(
        self,
        max_requests: int,
        max_prompt_tokens: int,
        tenants: Mapping[str, TenantPolicy] | None = None,
    ) -> None:
        self._max_requests = max_requests
        self._max_prompt_tokens = max_prompt_tokens
        self._lock = threading.Lock()
        self._fair = FairShare(dict(tenants or {}))
        self._accepting = False
        self.count = 0
        self.prompt_tokens = 0

    def set_accepting(self, accepting: bool) -> None:
        with self._lock:
            self._accepting = accepting

    def push(self, sequence: GenerationSequence) -> Refusal | None:
        """Queue `sequence`, or say why not. Raises `NotAcceptingError` when the engine is not
        accepting."""
        prompt_tokens = sequence.prompt_tokens
        name = sequence.request.tenant
        with self._lock:
            if not self._accepting:
                raise NotAcceptingError(
                    "the engine is not accepting requests (draining or not started)"
                )
            tenant = self._fair.tenant(name)
            policy = tenant.policy
            if policy.max_queue and tenant.count >= policy.max_queue:
                message = (
                    f"tenant '{name}' has {tenant.count} requests waiting "
                    f"(its limit is {policy.max_queue})"
                )
                return Refusal("tenant_queue_full", message, tenant.count, tenant_limit=True)
            if (
                policy.max_queue_tokens
                and tenant.count
                and tenant.prompt_tokens + prompt_tokens > policy.max_queue_tokens
            ):
                message = (
                    f"tenant '{name}' has {tenant.prompt_tokens} prompt tokens waiting "
                    f"(its limit is {policy.max_queue_tokens})"
                )
                return Refusal("tenant_queue_tokens_full", message, tenant.count, tenant_limit=True)
            if self.count >= self._max_requests:
                message = f"{self.count} requests are waiting"
                return Refusal("queue_full", message, self.count, tenant_limit=False)
            if self.count and self.prompt_tokens + prompt_tokens > self._max_prompt_tokens:
                message = f"{self.prompt_tokens} prompt tokens are waiting"
                return Refusal("queue_tokens_full", message, self.count, tenant_limit=False)
            self._fair.push(tenant, sequence)
            self.count += 1
            self.prompt_tokens += prompt_tokens
            return None

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
            while len(admitted) < free_rows:
                chosen = self._fair.next()
                if chosen is None:
                    break
                tenant, sequence = chosen
                # A newcomer costs its prompt plus its first decode token. The runner groups
                # prompts by length, so padding stays small and is not counted.
                cost += sequence.prompt_tokens - cached_tokens(sequence) + 1
                if cost > budget and (admitted or chunking):
                    break
                self._fair.take(tenant, sequence)
                self.count -= 1
                self.prompt_tokens -= sequence.prompt_tokens
                sequence.state = SequenceState.RUNNING
                if cost > budget:
                    return admitted, sequence
                admitted.append(sequence)
        return admitted, None

    def remove(self, sequence: GenerationSequence) -> None:
        """Take a finished waiting sequence off the counts (its heap entry goes later)."""
        with self._lock:
            self.count -= 1
            self.prompt_tokens -= sequence.prompt_tokens
            self._fair.drop(self._fair.tenant(sequence.request.tenant), sequence)

    def waiting_by_tenant(self) -> dict[str, int]:
        with self._lock:
            return {name: queue.count for name, queue in self._fair.tenants.items()}

    def waiting(self) -> list[GenerationSequence]:
        return [s for s in self.queued() if s.state is SequenceState.WAITING]

    def queued(self) -> list[GenerationSequence]:
        with self._lock:
            return [entry[2] for queue in self._fair.tenants.values() for entry in queue.heap]

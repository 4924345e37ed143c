"""Test doubles for the engines: a scripted step runner, a character codec and a recording observer.

No torch here: the batcher's scheduling, queueing, cancellation and error fan-out are tested against
these, fast and deterministically.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from modelplane_server.engine.contract import (
    DEFAULT_TENANT,
    PrefixCacheStats,
    RequestStats,
    SampledLogprob,
    SamplingParams,
    StepStats,
)


def default_token(prompt: Sequence[int], index: int) -> int:
    """Token number `index` of a sequence: printable characters, derived from the prompt."""
    return ord("a") + (sum(prompt) + index) % 26


@dataclass
class FakeRunner:
    """A `StepRunner` whose tokens come from `token(prompt, index)`; it logs every call."""

    token: Callable[[Sequence[int], int], int] = default_token
    step_delay_s: float = 0.0
    fail_decode_at: set[int] = field(default_factory=set)  # decode call numbers that raise
    fail_prefill_at: set[int] = field(default_factory=set)
    gate: threading.Event | None = None  # when set, every call waits for it
    prefills: list[list[int]] = field(default_factory=list)  # seq ids per prefill call
    decodes: list[list[int]] = field(default_factory=list)  # seq ids per decode call
    released: list[int] = field(default_factory=list)
    chunks: list[tuple[int, int, int]] = field(default_factory=list)  # (seq id, start, end)
    _prompts: dict[int, Sequence[int]] = field(default_factory=dict)
    _generated: dict[int, int] = field(default_factory=dict)
    _order: list[int] = field(default_factory=list)

    def _pause(self) -> None:
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the runner's gate"
        if self.step_delay_s:
            time.sleep(self.step_delay_s)

    def _next(self, seq_id: int) -> int:
        index = self._generated[seq_id]
        self._generated[seq_id] = index + 1
        return self.token(self._prompts[seq_id], index)

    def prefill(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
    ) -> list[int]:
        self._pause()
        self.prefills.append(list(seq_ids))
        if len(self.prefills) in self.fail_prefill_at:
            raise RuntimeError("injected prefill failure")
        for seq_id, prompt in zip(seq_ids, prompts, strict=True):
            self._prompts[seq_id] = prompt
            self._generated[seq_id] = 0
            self._order.append(seq_id)
        return [self._next(seq_id) for seq_id in seq_ids]

    def prefill_chunk(
        self, seq_id: int, prompt: Sequence[int], params: SamplingParams, start: int, end: int
    ) -> int | None:
        self._pause()
        self.chunks.append((seq_id, start, end))
        if end < len(prompt):
            return None
        self._prompts[seq_id] = prompt
        self._generated[seq_id] = 0
        self._order.append(seq_id)
        return self._next(seq_id)

    def cached_prefix_tokens(self, prompt: Sequence[int]) -> int:
        return 0

    def prefix_cache_stats(self) -> PrefixCacheStats:
        return PrefixCacheStats()

    def decode(self) -> tuple[list[int], list[int]]:
        self._pause()
        self.decodes.append(list(self._order))
        if len(self.decodes) in self.fail_decode_at:
            raise RuntimeError("injected decode failure (think: CUDA out of memory)")
        return list(self._order), [self._next(seq_id) for seq_id in self._order]

    def take_logprobs(self) -> dict[int, SampledLogprob]:
        return {}

    def release(self, seq_ids: Sequence[int]) -> None:
        leaving = set(seq_ids)
        self.released.extend(seq_ids)
        self._order = [seq_id for seq_id in self._order if seq_id not in leaving]

    def reset(self) -> None:
        self.release(list(self._order))


class CharacterCodec:
    """One token per character (its code point); enough to test text, stop strings and limits."""

    def __init__(self, context_length: int = 64) -> None:
        self._context_length = context_length

    @property
    def model_id(self) -> str:
        return "fake-model"

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return 0x110000  # every code point

    def encode(self, text: str) -> list[int]:
        return [ord(character) for character in text]

    @property
    def chat_template_renders_tools(self) -> bool:
        return False

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], tools: object = None
    ) -> list[int]:
        return self.encode("".join(f"{m['role']}: {m['content']}\n" for m in messages))

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(token) for token in token_ids)


@dataclass
class RecordingObserver:
    steps: list[StepStats] = field(default_factory=list)
    finished: list[RequestStats] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    rejected_tenants: list[str] = field(default_factory=list)
    embedding_batches: list[tuple[int, int, float]] = field(default_factory=list)

    def on_step(self, stats: StepStats) -> None:
        self.steps.append(stats)

    def on_request_finished(self, stats: RequestStats) -> None:
        self.finished.append(stats)

    def on_rejected(self, reason: str, tenant: str = DEFAULT_TENANT) -> None:
        self.rejected.append(reason)
        self.rejected_tenants.append(tenant)

    def on_embedding_batch(self, batch_size: int, tokens: int, duration_s: float) -> None:
        self.embedding_batches.append((batch_size, tokens, duration_s))


async def wait_until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Poll a condition the engine's thread makes true (there is no event to await for it)."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)

"""What the generation engine needs from the model side: the `StepRunner` that runs forward steps
over the running batch, and a codec that also decodes. `model.causal_lm.CausalLMRunner` and
`detokenize.TextCodec` implement them; tests use fakes. Defined here, on the engine side, so the
engine never imports torch (the model side imports this instead)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from modelplane_server.engine.contract import (
    PrefixCacheStats,
    SampledLogprob,
    SamplingParams,
    Tokenizing,
)


class StepRunner(Protocol):
    """The torch side as the engine sees it; every call happens on the step thread."""

    def prefill(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
    ) -> list[int]:
        """Prefill newcomers, add them to the running batch, return their first tokens."""

    def prefill_chunk(
        self, seq_id: int, prompt: Sequence[int], params: SamplingParams, start: int, end: int
    ) -> int | None:
        """Prefill prompt[start:end] of one long prompt; on its last chunk, add the sequence to
        the running batch and return its first token (None before that). The first chunk may
        start at the prompt's cached prefix (`cached_prefix_tokens`)."""

    def cached_prefix_tokens(self, prompt: Sequence[int]) -> int:
        """How many leading tokens of the prompt its prefill would take from the prefix cache
        now (admission counts only the rest against the step's budget)."""

    def prefix_cache_stats(self) -> PrefixCacheStats:
        """The prefix cache's counters and size (read from any thread: a snapshot, not exact)."""

    def decode(self) -> tuple[list[int], list[int]]:
        """One token for every running sequence: (sequence ids, tokens), aligned."""

    def take_logprobs(self) -> dict[int, SampledLogprob]:
        """The logprobs of the tokens the last prefill or decode produced, by sequence id (only
        for sequences whose `SamplingParams.logprobs` is set)."""

    def grammar_error(self, grammar: str) -> str | None:
        """Why `SamplingParams.grammar` cannot constrain this model's decoding, or None. Called
        at admission, on the event loop (implementations cache by grammar text)."""

    def release(self, seq_ids: Sequence[int]) -> None:
        """Remove sequences from the running batch."""

    def reset(self) -> None:
        """Remove every sequence (after a failed step)."""


class TextCodec(Tokenizing, Protocol):
    @property
    def vocab_size(self) -> int:
        """Token ids below this are the tokenizer's (prompts and `logit_bias` are checked)."""

    def decode(self, token_ids: Sequence[int]) -> str: ...

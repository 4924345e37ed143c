"""Grammar-constrained decoding with llguidance (what vLLM's "guidance" backend and llama.cpp use).

A request's `SamplingParams.grammar` is an llguidance Lark grammar (JSON schemas embed as `%json`);
`GrammarCompiler` checks it once at admission (so a bad schema is the client's 400 before anything
is queued) and makes one `RowGrammar` per sequence. In each sampling step every constrained row's
allowed-token bitmask is computed together (llguidance's executor, off the GIL) and applied to that
row's logits only, so constrained and free rows share one batch; the row's matcher then advances
with the token it sampled. When the grammar is complete only EOS stays allowed, which ends the
sequence through the engine's ordinary stop ids.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import torch

_BITS = 32
# Compiled-grammar checks are cached by grammar text: agents send the same schema every turn.
_CHECK_CACHE_SIZE = 512


class RowGrammar:
    """One sequence's grammar state: its matcher, advanced by every token the row samples."""

    def __init__(
        self,
        matcher: llguidance.LLMatcher,
        eos_token_ids: Sequence[int],
        executor: llguidance.LLExecutor,
    ) -> None:
        self.matcher = matcher
        self.eos_token_ids = tuple(eos_token_ids)
        self.executor = executor  # the compiler's thread pool, for the masks of a whole step

    def consume(self, token: int) -> None:
        # A token outside the mask can only come from a bug; the matcher then stays in its error
        # state and the mask falls back to EOS, ending the row rather than emitting garbage.
        self.matcher.consume_token(token)


class GrammarCompiler:
    """The tokenizer as llguidance sees it (built once: ~1 s), the admission check, and matchers."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        self._eos_token_ids = sorted(set(eos_token_ids))
        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=self._eos_token_ids or None
        )
        self._executor = llguidance.LLExecutor()
        self.error = functools.lru_cache(maxsize=_CHECK_CACHE_SIZE)(self._error)

    def _error(self, grammar: str) -> str | None:
        """Why this grammar cannot be used, or None (thread-safe: called on the event loop)."""
        try:
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
                grammar, self._tokenizer
            )
        except (ValueError, TypeError) as error:
            return str(error)
        return messages[0] if is_error else None

    def row(self, grammar: str) -> RowGrammar:
        matcher = llguidance.LLMatcher(self._tokenizer, grammar)
        return RowGrammar(matcher, self._eos_token_ids, self._executor)


def apply_grammar_masks(logits: torch.Tensor, rows: Sequence[tuple[int, RowGrammar]]) -> None:
    """Set to -inf, in place, every token the grammar of row `offset` of `logits` forbids.

    A row left with nothing allowed (its grammar wants only EOS while `min_tokens` still holds EOS
    back, or a token it needs is a held-back stop id) gets its EOS back: the grammar wins, and the
    row ends instead of sampling from nothing (NaN probabilities, which would fail the whole
    step)."""
    if not rows:
        return
    vocabulary = logits.shape[-1]
    bitmask = llguidance.torch.allocate_token_bitmask(len(rows), vocabulary)
    live = [
        (grammar.matcher, index)
        for index, (_, grammar) in enumerate(rows)
        if not grammar.matcher.is_error()
    ]
    if live:
        executor = rows[0][1].executor
        llguidance.torch.fill_next_token_bitmask_par(executor, live, bitmask)
    forbidden = ~unpack_bitmask(bitmask, vocabulary).to(logits.device)
    for index, (_, grammar) in enumerate(rows):
        if grammar.matcher.is_error():
            forbidden[index] = True
            forbidden[index, list(grammar.eos_token_ids)] = False
    # In place, row by row: a gather/scatter of the constrained rows costs twice as much.
    if [offset for offset, _ in rows] == list(range(logits.shape[0])):
        logits.masked_fill_(forbidden, float("-inf"))
    else:
        for index, (offset, _) in enumerate(rows):
            logits[offset].masked_fill_(forbidden[index], float("-inf"))
    # On the device, without a sync: every row's EOS logits become 0 where nothing is left.
    offsets = torch.tensor([offset for offset, _ in rows], device=logits.device)[:, None]
    eos = torch.tensor(rows[0][1].eos_token_ids, dtype=torch.long, device=logits.device)[None, :]
    dead = torch.isneginf(logits[offsets[:, 0]]).all(dim=-1, keepdim=True)
    logits[offsets, eos] = torch.where(dead, 0.0, logits[offsets, eos])


def unpack_bitmask(bitmask: torch.Tensor, vocabulary: int) -> torch.Tensor:
    """llguidance's int32 words (bit j of word i: token 32 i + j allowed) as `[rows, vocabulary]`
    booleans. Plain tensor ops: llguidance's own helper needs `torch.compile` (a C compiler)."""
    shifts = torch.arange(_BITS, dtype=torch.int32)
    bits = (bitmask[:, :, None] >> shifts) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocabulary].bool()

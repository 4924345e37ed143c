"""Automatic prefix caching: the keys and values of prompt prefixes that requests share (a system
prompt, few-shot examples, a conversation's earlier turns) are kept between requests, so a newcomer
whose prompt starts the same way prefills only the rest.

Prompts are cut into blocks of `BLOCK_TOKENS` tokens, as vLLM does. A block is found by its parent
block and its own token ids, so it matches only when everything before it matched too; the keys are
exact (a dict of tuples), so no hash collision can hand a prompt another prompt's keys. Only
whole blocks are kept, and a lookup never covers a prompt's last token: a newcomer always
prefills at least one token, whose logits it samples from.

The budget is in tokens (`--prefix-cache-tokens`; 0 disables the cache); the least recently used
block goes first. Whenever a chain of blocks is used, its blocks are touched from the tip to the
root, so a block is never more recent than its parent: the least recently used block is always a tip
and eviction never orphans a chain's tail.

Blocks are copied in (after a prefill) and out (into a newcomer's prefill cache), never shared with
the running batch, so evicting one cannot touch a running sequence. Their memory is what `bytes`
reports: tokens x layers x (key + value) x kv heads x head size x element size.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from modelplane_server.engine.contract import PrefixCacheStats

BLOCK_TOKENS = 16
_ROOT = -1  # the parent id of a prompt's first block


@dataclass(frozen=True, eq=False)
class CachedBlock:
    """One block's keys and values for every layer: `[layers, kv_heads, BLOCK_TOKENS, head_dim]`."""

    block_id: int
    keys: torch.Tensor
    values: torch.Tensor


_BlockKey = tuple[int, tuple[int, ...]]  # (parent block id, this block's token ids)


class PrefixCache:
    """Whole-block prompt prefixes under an LRU token budget. Used from the step thread only."""

    def __init__(self, capacity_tokens: int, block_tokens: int = BLOCK_TOKENS) -> None:
        self.capacity_tokens = capacity_tokens
        self.block_tokens = block_tokens
        self._blocks: collections.OrderedDict[_BlockKey, CachedBlock] = collections.OrderedDict()
        self._next_id = 0
        self._bytes_per_block = 0
        self.queries = 0  # prompt tokens looked up
        self.hits = 0  # of those, tokens found cached
        self.evictions = 0  # blocks dropped for room

    @property
    def enabled(self) -> bool:
        return self.capacity_tokens >= self.block_tokens

    def stats(self) -> PrefixCacheStats:
        blocks = len(self._blocks)
        return PrefixCacheStats(
            queries_tokens=self.queries,
            hit_tokens=self.hits,
            cached_tokens=blocks * self.block_tokens,
            cached_bytes=blocks * self._bytes_per_block,
            capacity_tokens=self.capacity_tokens,
            evicted_blocks=self.evictions,
        )

    def _chain(self, prompt: Sequence[int], blocks: int) -> list[tuple[_BlockKey, CachedBlock]]:
        """The cached blocks prompt[:blocks * block_tokens] starts with, root first."""
        found: list[tuple[_BlockKey, CachedBlock]] = []
        parent = _ROOT
        size = self.block_tokens
        for index in range(blocks):
            key = (parent, tuple(prompt[index * size : (index + 1) * size]))
            block = self._blocks.get(key)
            if block is None:
                break
            found.append((key, block))
            parent = block.block_id
        return found

    def _usable_blocks(self, prompt: Sequence[int]) -> int:
        # Never the last token: its logits are what the newcomer samples its first token from.
        return (len(prompt) - 1) // self.block_tokens if self.enabled else 0

    def peek(self, prompt: Sequence[int]) -> int:
        """How many of the prompt's tokens are cached now; counts nothing, touches nothing (for
        admission's cost estimate)."""
        return len(self._chain(prompt, self._usable_blocks(prompt))) * self.block_tokens

    def match(self, prompt: Sequence[int]) -> list[CachedBlock]:
        """The cached blocks the prompt starts with (counted as a query, and touched)."""
        if not self.enabled:
            return []
        chain = self._chain(prompt, self._usable_blocks(prompt))
        self.queries += len(prompt)
        self.hits += len(chain) * self.block_tokens
        self._touch(chain)
        return [block for _, block in chain]

    def _touch(self, chain: list[tuple[_BlockKey, CachedBlock]]) -> None:
        for key, _ in reversed(chain):  # tip first: the root ends up the most recent
            self._blocks.move_to_end(key)

    def store(
        self,
        prompt: Sequence[int],
        layer_keys: Sequence[torch.Tensor],
        layer_values: Sequence[torch.Tensor],
        row: int,
        offset: int,
    ) -> None:
        """Keep the prompt's whole blocks, whose keys and values are at `[row, :, offset + i]` of
        each layer's prefill tensors (`offset` skips a left-padded row's padding)."""
        if not self.enabled:
            return
        size = self.block_tokens
        blocks = len(prompt) // size
        chain = self._chain(prompt, blocks)
        parent = chain[-1][1].block_id if chain else _ROOT
        for index in range(len(chain), blocks):
            columns = slice(offset + index * size, offset + (index + 1) * size)
            block = CachedBlock(
                self._next_id,
                torch.stack([keys[row, :, columns] for keys in layer_keys]),
                torch.stack([values[row, :, columns] for values in layer_values]),
            )
            self._next_id += 1
            if not self._bytes_per_block:
                self._bytes_per_block = 2 * block.keys.numel() * block.keys.element_size()
            key = (parent, tuple(prompt[index * size : (index + 1) * size]))
            self._blocks[key] = block
            chain.append((key, block))
            parent = block.block_id
        self._touch(chain)
        while len(self._blocks) * size > self.capacity_tokens:
            self._blocks.popitem(last=False)
            self.evictions += 1


def concatenated(blocks: Sequence[CachedBlock]) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks' keys and values end to end: `[layers, 1, kv_heads, tokens, head_dim]` each."""
    keys = torch.cat([block.keys for block in blocks], dim=2)
    values = torch.cat([block.values for block in blocks], dim=2)
    return keys[:, None], values[:, None]

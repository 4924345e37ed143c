"""Automatic prefix caching: greedy outputs are token for token those of the same engine with the
cache off (prompts sharing a prefix, a prompt cached up to its last token, `n > 1`, chunked prefill,
eviction under a tiny budget), on a tiny random Llama and on SmolLM2; and the cache's own LRU order.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from test_engine_generation import collect, load, request, token_ids

from modelplane_server.engine.generation import ContinuousBatchingEngine
from modelplane_server.model.prefix_cache import PrefixCache

Wave = Sequence[Sequence[int]]


async def run_waves(engine: ContinuousBatchingEngine, waves: Sequence[Wave]) -> list[list[int]]:
    """Each wave's prompts at once (greedy, 8 tokens), the next wave after the last one ended."""
    outputs: list[list[int]] = []
    await engine.start()
    for number, wave in enumerate(waves):
        results = await asyncio.gather(
            *(
                collect(
                    engine.generate(
                        request(f"{number}-{index}", prompt, temperature=0.0, max_tokens=8)
                    )
                )
                for index, prompt in enumerate(wave)
            )
        )
        outputs.extend(token_ids(deltas) for deltas in results)
    await engine.stop(5)
    return outputs


def shared_prefix_waves(seed: int, vocab: int) -> list[Wave]:
    rng = random.Random(seed)  # noqa: S311 (reproducible test data, not cryptography)

    def tokens(count: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(count)]

    system = tokens(40)
    first = system + tokens(9)
    return [
        [first],
        [
            system + tokens(5),  # shares two blocks
            system + tokens(30),
            first,  # cached but for its last block, which holds its last token
            first[:32],  # whole blocks, all cached: the last token is still prefilled
            first[:32],  # twice in one step, like the choices of n > 1
            tokens(20),  # nothing shared
        ],
        [first + tokens(20), system[:17]],  # a later turn; a prefix one token past a block
    ]


async def compare(model: str, waves: Sequence[Wave], **config: int) -> ContinuousBatchingEngine:
    cached = load(model, prefix_cache_tokens=config.pop("prefix_cache_tokens", 4096), **config)
    expected = await run_waves(load(model, prefix_cache_tokens=0, **config), waves)
    assert await run_waves(cached, waves) == expected
    return cached


async def test_greedy_outputs_are_those_without_the_cache_on_a_tiny_llama(
    tiny_llama_dir: Path,
) -> None:
    engine = await compare(str(tiny_llama_dir), shared_prefix_waves(1, 8000))
    stats = engine.stats().prefix_cache
    assert 0 < stats.hit_tokens < stats.queries_tokens
    assert stats.cached_tokens > 0
    assert stats.cached_bytes > 0
    assert stats.evicted_blocks == 0


async def test_greedy_outputs_are_those_without_the_cache_on_smollm2() -> None:
    engine = await compare("", shared_prefix_waves(2, 40_000))
    assert engine.stats().prefix_cache.hit_tokens > 0


async def test_chunked_prefill_starts_after_the_cached_prefix(tiny_llama_dir: Path) -> None:
    rng = random.Random(3)  # noqa: S311 (reproducible test data, not cryptography)
    system = [rng.randrange(3, 8000) for _ in range(150)]
    waves = [
        [system + [rng.randrange(3, 8000) for _ in range(7)]],
        [system + [rng.randrange(3, 8000) for _ in range(90)], system[:100]],
    ]
    engine = await compare(str(tiny_llama_dir), waves, max_batch_tokens=64, max_prefill_tokens=64)
    assert engine.stats().prefix_cache.hit_tokens == 144 + 96  # 9 blocks, then 6 (99 // 16)


async def test_eviction_under_a_tiny_budget_keeps_outputs_exact(tiny_llama_dir: Path) -> None:
    engine = await compare(
        str(tiny_llama_dir), shared_prefix_waves(4, 8000), prefix_cache_tokens=32
    )
    stats = engine.stats().prefix_cache
    assert stats.evicted_blocks > 0
    assert stats.cached_tokens <= 32


def block_tensors(blocks: int) -> list[torch.Tensor]:
    """One layer's keys for a one-row prefill of `blocks` blocks of 4 tokens."""
    return [torch.arange(blocks * 4, dtype=torch.float32).reshape(1, 1, blocks * 4, 1)]


def test_lookups_never_cover_the_last_token_and_peeking_counts_nothing() -> None:
    cache = PrefixCache(capacity_tokens=64, block_tokens=4)
    prompt = list(range(12))
    cache.store(prompt, block_tensors(3), block_tensors(3), row=0, offset=0)
    assert cache.peek(prompt) == 8  # 3 blocks cached; the third holds the last token
    assert cache.peek([*prompt, 99]) == 12
    assert cache.peek([1, *prompt]) == 0
    assert (cache.queries, cache.hits) == (0, 0)
    assert len(cache.match(prompt)) == 2
    assert (cache.queries, cache.hits) == (12, 8)


@pytest.mark.parametrize("touch_first", [True, False])
def test_the_least_recently_used_tip_goes_first(touch_first: bool) -> None:
    cache = PrefixCache(capacity_tokens=16, block_tokens=4)
    first, second = [1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]
    cache.store(first, block_tensors(2), block_tensors(2), row=0, offset=0)
    cache.store(second, block_tensors(2), block_tensors(2), row=0, offset=0)
    if touch_first:
        cache.match([*first, 0])
    cache.store([*first[:4], 0, 0, 0, 0], block_tensors(2), block_tensors(2), row=0, offset=0)
    assert cache.evictions == 1
    # The new block shares `first`'s root, so the victim is a tip: `first`'s second block if
    # `second` was used more recently, else `second`'s second block; no root goes while its tip
    # stays.
    assert cache.peek([*first, 0]) == (8 if touch_first else 4)
    assert cache.peek([*second, 0]) == (4 if touch_first else 8)
    assert cache.stats().cached_tokens == 16

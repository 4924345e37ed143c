"""Prefill: newcomers' prompts through the model, into a prefill cache ready to join the batch.

Prompts are prefilled in left-padded mini-batches of similar length (one forward per group); a
prompt that starts with blocks of the `prefix_cache.PrefixCache` is prefilled on top of them, only
the rest computed; a long prompt is prefilled chunk by chunk into a private cache until its last
chunk. Every prefill leaves its prompt's blocks in the prefix cache. What comes out, a `Prefilled`,
is one row per sequence (the choices of an `n > 1` request share one prefill and are copied), for
`causal_lm.CausalLMRunner` to merge into its running batch and sample from.

Runs on the engine's step thread, under the runner's `torch.inference_mode()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from modelplane_server.engine.contract import SamplingParams
from modelplane_server.model.kv_cache import prefilled_states
from modelplane_server.model.prefix_cache import CachedBlock, PrefixCache, concatenated

# Most padding a prefill group may carry, as a fraction of its real prompt tokens.
_PREFILL_PADDING_SLACK = 0.125


@dataclass(frozen=True)
class Prefilled:
    """Prompts prefilled into `cache`, one row per sequence, left-padded to `width` (`attention`
    marks the real tokens), with the logits of each row's last position."""

    seq_ids: Sequence[int]
    prompts: Sequence[Sequence[int]]
    params: Sequence[SamplingParams]
    lengths: list[int]
    width: int
    attention: torch.Tensor
    cache: DynamicCache
    logits: torch.Tensor


def length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped by similar length (shortest first), each group's padding within the slack."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    groups: list[list[int]] = []
    real = 0
    for index in order:
        length = lengths[index]
        if groups and (len(groups[-1]) + 1) * length <= (1 + _PREFILL_PADDING_SLACK) * (
            real + length
        ):
            groups[-1].append(index)
            real += length
        else:
            groups.append([index])
            real = length
    return groups


def _copy_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Make row i of every layer of `cache` a copy of its row `rows[i]`."""
    for layer in cache.layers:
        if isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None:
            layer.keys = layer.keys.index_select(0, rows)
            layer.values = layer.values.index_select(0, rows)


class Prefiller:
    """Prefills prompts with a model, reading and filling its prefix cache."""

    def __init__(self, model: Any, device: torch.device, prefix_cache: PrefixCache) -> None:
        self._model = model
        self._device = device
        self._keeps_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.prefix_cache = prefix_cache
        # Long prompts being prefilled chunk by chunk, each in its own cache until it joins.
        self._partial: dict[int, DynamicCache] = {}

    def prefill(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
    ) -> Iterator[Prefilled]:
        """Prefill these prompts, one forward (and one `Prefilled`) at a time, so the caller can
        merge each before the next is computed.

        A prompt that starts with cached blocks (`prefix_cache`) prefills only the rest, on its own
        (its choices, for `n > 1`, together). The others are prefilled in groups of similar length
        (one forward per group) so that padding stays under `_PREFILL_PADDING_SLACK` of the real
        tokens: on CPU a padded token costs as much as a real one, and one 128-token prompt would
        otherwise pad thirty 32-token ones to 128.
        """
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for index, prompt in enumerate(prompts):
            by_prompt.setdefault(tuple(prompt), []).append(index)
        uncached: list[int] = []
        for prompt, indices in by_prompt.items():
            blocks = self.prefix_cache.match(prompt)
            if not blocks:
                uncached.extend(indices)
                continue
            cache = self._seeded_cache(blocks)
            logits = self._extend(cache, prompt, cache.get_seq_length(), len(prompt))
            self._store_prefix(prompt, cache, 0, 0)
            yield self._one_prompt(
                [seq_ids[index] for index in indices],
                [prompts[index] for index in indices],
                [params[index] for index in indices],
                cache,
                logits,
            )
        lengths = [len(prompts[index]) for index in uncached]
        for group in length_groups(lengths):
            members = [uncached[position] for position in group]
            yield self._group(
                [seq_ids[index] for index in members],
                [prompts[index] for index in members],
                [params[index] for index in members],
            )

    def chunk(
        self, seq_id: int, prompt: Sequence[int], params: SamplingParams, start: int, end: int
    ) -> Prefilled | None:
        """Prefill prompt[start:end]; after the last chunk, the whole prompt, ready to join.

        The chunks extend a private cache exactly as one long prefill would (positions and the
        causal mask continue from `start`), so the result does not depend on the chunking. The
        first chunk's cache starts with the prompt's cached prefix; whatever the cache already
        holds is not computed again, so a `start` inside the cached prefix (or beyond what was
        still cached, should a block have gone) is safe.
        """
        cache = self._partial.get(seq_id)
        if cache is None:
            cache = self._seeded_cache(self.prefix_cache.match(prompt))
            self._partial[seq_id] = cache
        done = cache.get_seq_length()
        if end <= done and end < len(prompt):
            return None
        logits = self._extend(cache, prompt, done, end)
        if end < len(prompt):
            return None
        del self._partial[seq_id]
        self._store_prefix(prompt, cache, 0, 0)
        return self._one_prompt([seq_id], [prompt], [params], cache, logits)

    def forget(self, seq_ids: Sequence[int]) -> None:
        """Drop the partial prefills of these sequences (cancelled, failed); skip unknown ids."""
        for seq_id in seq_ids:
            self._partial.pop(seq_id, None)

    def clear(self) -> None:
        self._partial.clear()

    def _seeded_cache(self, blocks: Sequence[CachedBlock]) -> DynamicCache:
        """A one-row prefill cache holding these cached blocks' keys and values."""
        cache = DynamicCache(config=self._model.config)
        if blocks:
            keys, values = concatenated(blocks)
            for layer in range(keys.shape[0]):
                # Copied in: the running batch must never share a tensor with the prefix cache.
                cache.update(keys[layer].clone(), values[layer].clone(), layer)
        return cache

    def _extend(
        self, cache: DynamicCache, prompt: Sequence[int], start: int, end: int
    ) -> torch.Tensor:
        """Prefill prompt[start:end] on top of the one-row `cache`; the last position's logits."""
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._keeps_last_logits else {}
        output = self._model(
            input_ids=torch.tensor([list(prompt[start:end])], dtype=torch.long).to(self._device),
            attention_mask=torch.ones((1, end), dtype=torch.long, device=self._device),
            position_ids=torch.arange(start, end, device=self._device)[None, :],
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits

    def _store_prefix(
        self, prompt: Sequence[int], cache: DynamicCache, row: int, offset: int
    ) -> None:
        if self.prefix_cache.enabled:
            keys, values = prefilled_states(cache)
            self.prefix_cache.store(prompt, keys, values, row, offset)

    def _one_prompt(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        cache: DynamicCache,
        logits: torch.Tensor,
    ) -> Prefilled:
        """One prefilled prompt (one row of `cache`), copied once per sequence (the choices of an
        `n > 1` request share it)."""
        count = len(seq_ids)
        width = len(prompts[0])
        if count > 1:
            rows = torch.zeros(count, dtype=torch.long, device=self._device)
            logits = logits.index_select(0, rows)
            _copy_rows(cache, rows)
        return Prefilled(
            seq_ids,
            prompts,
            params,
            lengths=[width] * count,
            width=width,
            attention=torch.ones((count, width), dtype=torch.long, device=self._device),
            cache=cache,
            logits=logits,
        )

    def _group(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
    ) -> Prefilled:
        lengths = [len(prompt) for prompt in prompts]
        width = max(lengths)
        # A prompt sent more than once (the choices of an `n > 1` request) is prefilled once; its
        # rows of the prefill cache, logits and mask are then copied for each sequence.
        distinct: dict[tuple[int, ...], int] = {}
        source = [distinct.setdefault(tuple(prompt), len(distinct)) for prompt in prompts]
        input_ids = torch.zeros((len(distinct), width), dtype=torch.long)
        attention = torch.zeros((len(distinct), width), dtype=torch.long)
        for row, prompt in enumerate(distinct):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt) :] = 1
        input_ids = input_ids.to(self._device)
        attention = attention.to(self._device)
        # The same positions generate() gives a left-padded batch: real tokens count from 0.
        position_ids = (attention.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=self._model.config)
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._keeps_last_logits else {}
        output = self._model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        logits = output.logits[:, -1, :]
        for row, prompt in enumerate(distinct):
            self._store_prefix(prompt, cache, row, width - len(prompt))
        if len(distinct) < len(prompts):
            rows = torch.tensor(source, device=self._device)
            logits, attention = logits.index_select(0, rows), attention.index_select(0, rows)
            _copy_rows(cache, rows)
        return Prefilled(seq_ids, prompts, params, lengths, width, attention, cache, logits)

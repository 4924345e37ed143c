"""The causal LM runner: forward passes over the running batch, the engine's `StepRunner`.

Newcomers are prefilled in left-padded mini-batches of similar prompt length (a long prompt chunk by
chunk; a prompt that starts with blocks of the `prefix_cache.PrefixCache` on top of them, prefilling
only the rest), then join the running batch, whose rows live in a `kv_cache.SlotKVCache`; one decode
step is one `[rows, 1]` forward over it. Every prefill leaves its prompt's blocks in the prefix
cache. Full attention only: sliding-window and linear-attention layers
are refused at load time.

Every method runs on one thread (the engine's step thread, or the loader before it starts), under
`torch.inference_mode()`. The device is given; nothing here picks one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from modelplane_server.engine.contract import PrefixCacheStats, SampledLogprob, SamplingParams
from modelplane_server.model.grammar import GrammarCompiler
from modelplane_server.model.kv_cache import SlotKVCache, prefilled_states
from modelplane_server.model.prefix_cache import CachedBlock, PrefixCache, concatenated
from modelplane_server.model.sampling import RowProcessor, SamplingState

# Most padding a prefill group may carry, as a fraction of its real prompt tokens.
_PREFILL_PADDING_SLACK = 0.125


def _length_groups(lengths: Sequence[int]) -> list[list[int]]:
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


def check_supported(config: Any) -> None:
    """Refuse models whose cache is not plain full attention (the padded window needs it)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        raise ValueError(
            f"unsupported attention layer types {sorted(set(layer_types))}: full attention only"
        )
    if (
        layer_types is None
        and getattr(config, "sliding_window", None)
        and getattr(config, "use_sliding_window", True)
    ):
        raise ValueError("sliding-window attention is not supported: full attention only")


class CausalLMRunner:
    """A causal LM and its running batch. Rows are identified by the engine's sequence ids."""

    def __init__(
        self,
        model: Any,
        device: torch.device,
        max_batch_size: int,
        context_length: int,
        eos_token_ids: Iterable[int] = (),
        *,
        prefix_cache_tokens: int = 0,
        grammars: GrammarCompiler | None = None,
    ) -> None:
        check_supported(model.config)
        self._grammars = grammars  # None: requests with a grammar are refused
        # What `min_tokens` holds back, with each request's stop ids (unless it ignores EOS).
        self._eos_token_ids = frozenset(eos_token_ids)
        self._model = model
        self._device = device
        self._keeps_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._sampling = SamplingState(0, device)
        self.kv_cache = SlotKVCache(
            model.config, device, self._sampling, max_batch_size, context_length
        )
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        # Long prompts being prefilled chunk by chunk, each in its own cache until it joins.
        self._partial: dict[int, DynamicCache] = {}

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def running_ids(self) -> list[int]:
        return list(self.kv_cache.row_seq)

    @torch.inference_mode()
    def prefill(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
    ) -> list[int]:
        """Prefill newcomers, add them to the running batch; return their first tokens.

        A prompt that starts with cached blocks (`prefix_cache`) prefills only the rest, on its own
        (its choices, for `n > 1`, together). The others are prefilled in groups of similar length
        (one forward per group) so that padding stays under `_PREFILL_PADDING_SLACK` of the real
        tokens: on CPU a padded token costs as much as a real one, and one 128-token prompt would
        otherwise pad thirty 32-token ones to 128.
        """
        tokens = [0] * len(prompts)
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
            first = self._join(
                [seq_ids[index] for index in indices],
                [prompts[index] for index in indices],
                [params[index] for index in indices],
                cache,
                logits,
            )
            for index, token in zip(indices, first, strict=True):
                tokens[index] = token
        lengths = [len(prompts[index]) for index in uncached]
        for group in _length_groups(lengths):
            members = [uncached[position] for position in group]
            group_tokens = self._prefill_group(
                [seq_ids[index] for index in members],
                [prompts[index] for index in members],
                [params[index] for index in members],
            )
            for index, token in zip(members, group_tokens, strict=True):
                tokens[index] = token
        return tokens

    @torch.inference_mode()
    def prefill_chunk(
        self, seq_id: int, prompt: Sequence[int], params: SamplingParams, start: int, end: int
    ) -> int | None:
        """Prefill prompt[start:end]; after the last chunk the sequence joins the batch.

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
        return self._join([seq_id], [prompt], [params], cache, logits)[0]

    def cached_prefix_tokens(self, prompt: Sequence[int]) -> int:
        """How many of the prompt's tokens the prefix cache holds now (counts no query)."""
        return self.prefix_cache.peek(prompt)

    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self.prefix_cache.stats()

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

    def _join(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        cache: DynamicCache,
        logits: torch.Tensor,
    ) -> list[int]:
        """Move one prefilled prompt (one row of `cache`) into the running batch, once per
        sequence (the choices of an `n > 1` request share it), and sample the first tokens."""
        count = len(seq_ids)
        width = len(prompts[0])
        if count > 1:
            rows = torch.zeros(count, dtype=torch.long, device=self._device)
            logits = logits.index_select(0, rows)
            _copy_rows(cache, rows)
        return self._merge_and_sample(
            seq_ids,
            prompts,
            params,
            lengths=[width] * count,
            width=width,
            attention=torch.ones((count, width), dtype=torch.long, device=self._device),
            cache=cache,
            logits=logits,
        )

    def _merge_and_sample(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        *,
        lengths: list[int],
        width: int,
        attention: torch.Tensor,
        cache: DynamicCache,
        logits: torch.Tensor,
    ) -> list[int]:
        first_row = self.kv_cache.merge(
            seq_ids=seq_ids,
            params=params,
            processors=[
                self._processor(p, prompt) for p, prompt in zip(params, prompts, strict=True)
            ],
            lengths=lengths,
            width=width,
            attention=attention,
            prefill_cache=cache,
        )
        tokens = self._sampling.sample(logits, first_row)
        self.kv_cache.last_tokens[first_row : first_row + len(seq_ids)] = tokens
        return [int(token) for token in tokens.tolist()]

    def _processor(self, params: SamplingParams, prompt: Sequence[int]) -> RowProcessor | None:
        if not RowProcessor.needed(params):
            return None
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self._eos_token_ids
        grammar = None
        if params.grammar is not None:
            assert self._grammars is not None, "grammar_error() admits no grammar without one"
            grammar = self._grammars.row(params.grammar)
        return RowProcessor(params, prompt, stop_ids, grammar)

    def grammar_error(self, grammar: str) -> str | None:
        if self._grammars is None:
            return "this model has no fast tokenizer, which constrained decoding needs"
        return self._grammars.error(grammar)

    def _prefill_group(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
    ) -> list[int]:
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
        prefill_cache = DynamicCache(config=self._model.config)
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._keeps_last_logits else {}
        output = self._model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=position_ids,
            past_key_values=prefill_cache,
            use_cache=True,
            **extra,
        )
        logits = output.logits[:, -1, :]
        for row, prompt in enumerate(distinct):
            self._store_prefix(prompt, prefill_cache, row, width - len(prompt))
        if len(distinct) < len(prompts):
            rows = torch.tensor(source, device=self._device)
            logits, attention = logits.index_select(0, rows), attention.index_select(0, rows)
            _copy_rows(prefill_cache, rows)
        return self._merge_and_sample(
            seq_ids,
            prompts,
            params,
            lengths=lengths,
            width=width,
            attention=attention,
            cache=prefill_cache,
            logits=logits,
        )

    @torch.inference_mode()
    def decode(self) -> tuple[list[int], list[int]]:
        """One forward step for every running row; returns (sequence ids, next tokens), aligned."""
        kv_cache = self.kv_cache
        window = kv_cache.window
        rows = window.rows
        if rows == 0:
            return [], []
        kv_cache.reserve(rows, 0, 1)
        kv_cache.mask[:rows, window.end] = True
        output = self._model(
            input_ids=kv_cache.last_tokens[:rows, None],
            attention_mask=kv_cache.mask[:rows, window.start : window.end + 1],
            position_ids=kv_cache.positions[:rows, None],
            past_key_values=kv_cache.layers,
            use_cache=True,
        )
        window.end += 1
        kv_cache.positions[:rows] += 1
        tokens = self._sampling.sample(output.logits[:, -1, :], 0)
        kv_cache.last_tokens[:rows] = tokens
        return list(kv_cache.row_seq), [int(token) for token in tokens.tolist()]

    def take_logprobs(self) -> dict[int, SampledLogprob]:
        """The logprobs of the tokens the last prefill or decode produced, by sequence id, for
        the sequences that asked for them."""
        taken: dict[int, SampledLogprob] = {}
        for row, seq_id in enumerate(self.kv_cache.row_seq):
            processor = self._sampling.processors[row]
            if processor is not None and processor.sampled is not None:
                taken[seq_id], processor.sampled = processor.sampled, None
        return taken

    @torch.inference_mode()
    def release(self, seq_ids: Sequence[int]) -> None:
        """Drop sequences from the running batch (finished, cancelled, failed); skip unknown ids."""
        for seq_id in seq_ids:
            self._partial.pop(seq_id, None)
        self.kv_cache.release(seq_ids)

    def reset(self) -> None:
        """Forget the whole running batch and any partial prefill (after a failed step)."""
        self._partial.clear()
        self.release(self.running_ids)

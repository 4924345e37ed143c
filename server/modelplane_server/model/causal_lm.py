"""The causal LM runner: forward passes over the running batch, the engine's `StepRunner`.

Newcomers are prefilled by a `prefill.Prefiller` (groups of similar length, prefix-cache hits on top
of their cached blocks, long prompts chunk by chunk), then join the running batch, whose rows live
in a `kv_cache.SlotKVCache`; one decode step is one `[rows, 1]` forward over it. Each row samples
through `sampling.SamplingState`, with its own logit processing (penalties, bias, a grammar's mask)
where its request asks for any. Full attention only: sliding-window and linear-attention layers are
refused at load time.

Every method runs on one thread (the engine's step thread, or the loader before it starts), under
`torch.inference_mode()`. The device is given; nothing here picks one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from modelplane_server.engine.contract import PrefixCacheStats, SampledLogprob, SamplingParams
from modelplane_server.model.grammar import GrammarCompiler
from modelplane_server.model.kv_cache import SlotKVCache
from modelplane_server.model.prefill import Prefilled, Prefiller
from modelplane_server.model.prefix_cache import PrefixCache
from modelplane_server.model.sampling import RowProcessor, SamplingState


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
        self._sampling = SamplingState(0, device)
        self.kv_cache = SlotKVCache(
            model.config, device, self._sampling, max_batch_size, context_length
        )
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self._prefiller = Prefiller(model, device, self.prefix_cache)

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
        """Prefill newcomers, add them to the running batch; return their first tokens (each
        prefill forward's rows join before the next forward runs)."""
        first: dict[int, int] = {}
        for prefilled in self._prefiller.prefill(seq_ids, prompts, params):
            first.update(zip(prefilled.seq_ids, self._merge_and_sample(prefilled), strict=True))
        return [first[seq_id] for seq_id in seq_ids]

    @torch.inference_mode()
    def prefill_chunk(
        self, seq_id: int, prompt: Sequence[int], params: SamplingParams, start: int, end: int
    ) -> int | None:
        """Prefill prompt[start:end] (`Prefiller.chunk`); after the last chunk the sequence joins
        the batch and its first token is returned."""
        prefilled = self._prefiller.chunk(seq_id, prompt, params, start, end)
        return None if prefilled is None else self._merge_and_sample(prefilled)[0]

    def cached_prefix_tokens(self, prompt: Sequence[int]) -> int:
        """How many of the prompt's tokens the prefix cache holds now (counts no query)."""
        return self.prefix_cache.peek(prompt)

    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self.prefix_cache.stats()

    def _merge_and_sample(self, prefilled: Prefilled) -> list[int]:
        first_row = self.kv_cache.merge(
            seq_ids=prefilled.seq_ids,
            params=prefilled.params,
            processors=[
                self._processor(p, prompt)
                for p, prompt in zip(prefilled.params, prefilled.prompts, strict=True)
            ],
            lengths=prefilled.lengths,
            width=prefilled.width,
            attention=prefilled.attention,
            prefill_cache=prefilled.cache,
        )
        tokens = self._sampling.sample(prefilled.logits, first_row)
        self.kv_cache.last_tokens[first_row : first_row + len(prefilled.seq_ids)] = tokens
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
        self._prefiller.forget(seq_ids)
        self.kv_cache.release(seq_ids)

    def reset(self) -> None:
        """Forget the whole running batch and any partial prefill (after a failed step)."""
        self._prefiller.clear()
        self.release(self.running_ids)

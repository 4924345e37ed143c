"""The torch side of the server: forward passes over a running batch, and the embedding forward.

`CausalLMRunner` keeps the running batch of a causal LM as a left-padded KV cache in preallocated
buffers (`[rows, kv_heads, columns, head_dim]` per layer) that all rows share column-wise:

- every row's last token sits in the same column, so one decode step is one `[rows, 1]` forward that
  writes one new column in place (no per-step `torch.cat` of the whole cache as in `DynamicCache`);
- newcomers are prefilled in left-padded mini-batches of similar prompt length, then copied into
  free rows so that their prompt ends at the shared last column (left padding, masked out);
- finished rows leave by moving the last rows into their slots (only moved rows are copied), and the
  window's leading all-padding columns are dropped by moving a start index, not by copying.

The model sees the buffers through a transformers `Cache` whose layers return views of the window,
so any `AutoModelForCausalLM` whose attention goes through `Cache.update` works (full attention
only; sliding-window and linear-attention layers are refused at load time).

Every method runs on one thread (the engine's step thread, or the loader before it starts), under
`torch.inference_mode()`. The device is given; nothing here picks one.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer

from modelplane_server.engine.contract import SamplingParams
from modelplane_server.model.sampling import SamplingState

_INITIAL_COLUMNS = 256
_INITIAL_ROWS = 8
# Free columns kept beyond the context length, so a full-context window is compacted every so
# many steps rather than every step.
_COLUMN_HEADROOM = 64
# Most padding a prefill group may carry, as a fraction of its real prompt tokens.
_PREFILL_PADDING_SLACK = 0.125


class _Window:
    """Which rows and columns of the buffers are live. Shared by the runner and its cache layers."""

    def __init__(self) -> None:
        self.rows = 0
        self.start = 0  # first column any live row uses
        self.end = 0  # one past the last written column; the next decode step writes here


class _SlotLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]  # transformers' hook is untyped
    """One layer's view of the runner's buffers, in the shape transformers' attention expects."""

    is_sliding = False
    is_croppable = False

    def __init__(self, runner: CausalLMRunner, layer_index: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._runner = runner
        self._layer_index = layer_index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """The runner allocates the buffers; nothing to do here."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        window = self._runner.window
        keys = self._runner.keys[self._layer_index]
        values = self._runner.values[self._layer_index]
        length = key_states.shape[-2]
        keys[: window.rows, :, window.end : window.end + length] = key_states
        values[: window.rows, :, window.end : window.end + length] = value_states
        return (
            keys[: window.rows, :, window.start : window.end + length],
            values[: window.rows, :, window.start : window.end + length],
        )

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        window = self._runner.window
        return window.end - window.start + query_length, 0

    def get_seq_length(self) -> int:
        window = self._runner.window
        return window.end - window.start

    def get_max_length(self) -> int:
        return -1


def _prefilled_states(cache: DynamicCache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(f"unexpected prefill cache layer {type(layer).__name__}")
        keys.append(layer.keys)
        values.append(layer.values)
    return keys, values


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
        self, model: Any, device: torch.device, max_batch_size: int, context_length: int
    ) -> None:
        check_supported(model.config)
        self._model = model
        self._device = device
        self._max_batch_size = max_batch_size
        # The window never exceeds the longest sequence, so buffers need at most the context plus
        # some headroom; without this cap the doubling could reserve twice the context per row.
        self._max_columns = context_length + _COLUMN_HEADROOM
        self._num_layers = int(model.config.num_hidden_layers)
        self._keeps_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.window = _Window()
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._mask = torch.zeros((0, 0), dtype=torch.bool, device=device)
        self._positions = torch.zeros(0, dtype=torch.long, device=device)
        self._last_tokens = torch.zeros(0, dtype=torch.long, device=device)
        self._sampling = SamplingState(0, device)
        self._row_seq: list[int] = []
        self._row_start: list[int] = []
        self._cache = Cache(layers=[_SlotLayer(self, index) for index in range(self._num_layers)])
        # Long prompts being prefilled chunk by chunk, each in its own cache until it joins.
        self._partial: dict[int, DynamicCache] = {}

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def running_ids(self) -> list[int]:
        return list(self._row_seq)

    @property
    def cached_columns(self) -> int:
        """Width of the live KV window (longest sequence plus left padding)."""
        return self.window.end - self.window.start

    @torch.inference_mode()
    def prefill(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
    ) -> list[int]:
        """Prefill newcomers, add them to the running batch; return their first tokens.

        Prompts are prefilled in groups of similar length (one forward per group) so that padding
        stays under `_PREFILL_PADDING_SLACK` of the real tokens: on CPU a padded token costs as much
        as a real one, and one 128-token prompt would otherwise pad thirty 32-token ones to 128.
        """
        tokens = [0] * len(prompts)
        for group in _length_groups([len(prompt) for prompt in prompts]):
            group_tokens = self._prefill_group(
                [seq_ids[index] for index in group],
                [prompts[index] for index in group],
                [params[index] for index in group],
            )
            for index, token in zip(group, group_tokens, strict=True):
                tokens[index] = token
        return tokens

    @torch.inference_mode()
    def prefill_chunk(
        self, seq_id: int, prompt: Sequence[int], params: SamplingParams, start: int, end: int
    ) -> int | None:
        """Prefill prompt[start:end]; after the last chunk the sequence joins the batch.

        The chunks extend a private cache exactly as one long prefill would (positions and the
        causal mask continue from `start`), so the result does not depend on the chunking.
        """
        cache = self._partial.setdefault(seq_id, DynamicCache(config=self._model.config))
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._keeps_last_logits else {}
        output = self._model(
            input_ids=torch.tensor([list(prompt[start:end])], dtype=torch.long).to(self._device),
            attention_mask=torch.ones((1, end), dtype=torch.long, device=self._device),
            position_ids=torch.arange(start, end, device=self._device)[None, :],
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        if end < len(prompt):
            return None
        del self._partial[seq_id]
        first_row = self._merge(
            seq_ids=[seq_id],
            params=[params],
            lengths=[end],
            width=end,
            attention=torch.ones((1, end), dtype=torch.long, device=self._device),
            prefill_cache=cache,
        )
        token = self._sampling.sample(output.logits[:, -1, :], first_row)
        self._last_tokens[first_row] = token[0]
        return int(token[0])

    def _prefill_group(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
    ) -> list[int]:
        lengths = [len(prompt) for prompt in prompts]
        width = max(lengths)
        input_ids = torch.zeros((len(prompts), width), dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - lengths[row] :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - lengths[row] :] = 1
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
        first_row = self._merge(
            seq_ids=seq_ids,
            params=params,
            lengths=lengths,
            width=width,
            attention=attention,
            prefill_cache=prefill_cache,
        )
        tokens = self._sampling.sample(logits, first_row)
        self._last_tokens[first_row : first_row + len(prompts)] = tokens
        return [int(token) for token in tokens.tolist()]

    @torch.inference_mode()
    def decode(self) -> tuple[list[int], list[int]]:
        """One forward step for every running row; returns (sequence ids, next tokens), aligned."""
        window = self.window
        rows = window.rows
        if rows == 0:
            return [], []
        self._reserve(rows, 0, 1)
        self._mask[:rows, window.end] = True
        output = self._model(
            input_ids=self._last_tokens[:rows, None],
            attention_mask=self._mask[:rows, window.start : window.end + 1],
            position_ids=self._positions[:rows, None],
            past_key_values=self._cache,
            use_cache=True,
        )
        window.end += 1
        self._positions[:rows] += 1
        tokens = self._sampling.sample(output.logits[:, -1, :], 0)
        self._last_tokens[:rows] = tokens
        return list(self._row_seq), [int(token) for token in tokens.tolist()]

    @torch.inference_mode()
    def release(self, seq_ids: Sequence[int]) -> None:
        """Drop sequences from the running batch (finished, cancelled, failed); skip unknown ids."""
        leaving = set(seq_ids)
        for seq_id in leaving:
            self._partial.pop(seq_id, None)
        if not leaving.intersection(self._row_seq):
            return
        rows = self.window.rows
        kept = [row for row in range(rows) if self._row_seq[row] not in leaving]
        remaining = len(kept)
        # Fill the holes below `remaining` with the survivors above it: only those rows are copied.
        holes = [row for row in range(remaining) if self._row_seq[row] in leaving]
        movers = [row for row in kept if row >= remaining]
        if holes:
            self._move_rows(movers, holes)
        self._row_seq = self._row_seq[:remaining]
        self._row_start = self._row_start[:remaining]
        self.window.rows = remaining
        if remaining:
            self.window.start = min(self._row_start)
        else:
            self.window.start = self.window.end = 0

    def reset(self) -> None:
        """Forget the whole running batch and any partial prefill (after a failed step)."""
        self._partial.clear()
        self.release(self.running_ids)

    def _move_rows(self, sources: list[int], targets: list[int]) -> None:
        window = self.window
        source_index = torch.tensor(sources, device=self._device)
        target_index = torch.tensor(targets, device=self._device)
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[target_index, :, window.start : window.end] = buffer[
                    source_index, :, window.start : window.end
                ]
        # Whole mask rows move: no stale column of a previous occupant survives outside the window.
        for tensor in (self._mask, self._positions, self._last_tokens):
            tensor[target_index] = tensor[source_index]
        self._sampling.move_rows(sources, targets)
        for source, target in zip(sources, targets, strict=True):
            self._row_seq[target] = self._row_seq[source]
            self._row_start[target] = self._row_start[source]

    def _merge(
        self,
        *,
        seq_ids: Sequence[int],
        params: Sequence[SamplingParams],
        lengths: list[int],
        width: int,
        attention: torch.Tensor,
        prefill_cache: DynamicCache,
    ) -> int:
        """Copy a prefilled mini-batch into free rows, prompts ending at the shared last column."""
        count = len(seq_ids)
        first_row = self.window.rows
        if first_row == 0:
            # An empty batch starts where these prompts just fit, leaving the rest for decoding.
            self.window.start = self.window.end = width
        layer_keys, layer_values = _prefilled_states(prefill_cache)
        self._reserve(first_row + count, width, 1, like=(layer_keys[0], layer_values[0]))
        window = self.window
        end = window.end
        rows = slice(first_row, first_row + count)
        for index in range(self._num_layers):
            self.keys[index][rows, :, end - width : end] = layer_keys[index]
            self.values[index][rows, :, end - width : end] = layer_values[index]
        self._mask[rows] = False
        self._mask[rows, end - width : end] = attention.bool()
        self._positions[rows] = torch.tensor(lengths, device=self._device)
        self._sampling.set_rows(
            first_row,
            [param.temperature for param in params],
            [param.top_p for param in params],
            [param.top_k for param in params],
            [param.seed for param in params],
        )
        self._row_seq.extend(seq_ids)
        self._row_start.extend(end - length for length in lengths)
        window.rows = first_row + count
        window.start = min(window.start if first_row else end, end - width)
        return first_row

    def _reserve(
        self,
        rows: int,
        columns_before_end: int,
        columns_after_end: int,
        like: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Make room for `rows` rows and these columns around `window.end`; relayout if needed.

        A relayout copies the live window into fresh zeroed buffers (zeros, not empty: masked
        columns still enter the attention product, and 0 * NaN from uninitialised memory would
        poison it). Capacities grow geometrically, so relayouts are rare and their cost amortises.
        """
        window = self.window
        row_capacity = self._mask.shape[0]
        column_capacity = self._mask.shape[1]
        if (
            rows <= row_capacity
            and window.end >= columns_before_end
            and window.end + columns_after_end <= column_capacity
        ):
            return
        live = window.end - window.start
        new_end = max(live, columns_before_end)
        needed_columns = new_end + columns_after_end
        # Keep at least half the columns free after a relayout (up to the context cap), so the
        # next relayout is far away.
        if 2 * needed_columns > column_capacity and column_capacity < self._max_columns:
            column_capacity = max(column_capacity, _INITIAL_COLUMNS)
            while column_capacity < 2 * needed_columns:
                column_capacity *= 2
            column_capacity = max(needed_columns, min(column_capacity, self._max_columns))
        while row_capacity < rows:
            row_capacity = min(max(2 * row_capacity, _INITIAL_ROWS), self._max_batch_size)
            if row_capacity < rows and row_capacity == self._max_batch_size:
                raise ValueError(f"{rows} rows exceed max_batch_size {self._max_batch_size}")
        template_keys, template_values = (
            like if like is not None else (self.keys[0], self.values[0])
        )
        live_rows = window.rows
        old_columns = slice(window.start, window.end)
        new_columns = slice(new_end - live, new_end)

        def relaid(old: torch.Tensor | None, template: torch.Tensor) -> torch.Tensor:
            shape = (row_capacity, template.shape[1], column_capacity, template.shape[3])
            fresh = torch.zeros(shape, dtype=template.dtype, device=self._device)
            if old is not None and live_rows and live:
                fresh[:live_rows, :, new_columns] = old[:live_rows, :, old_columns]
            return fresh

        had_buffers = bool(self.keys)
        keys = [
            relaid(self.keys[i] if had_buffers else None, template_keys)
            for i in range(self._num_layers)
        ]
        values = [
            relaid(self.values[i] if had_buffers else None, template_values)
            for i in range(self._num_layers)
        ]
        mask = torch.zeros((row_capacity, column_capacity), dtype=torch.bool, device=self._device)
        mask[:live_rows, new_columns] = self._mask[:live_rows, old_columns]
        positions = torch.zeros(row_capacity, dtype=torch.long, device=self._device)
        positions[:live_rows] = self._positions[:live_rows]
        last_tokens = torch.zeros(row_capacity, dtype=torch.long, device=self._device)
        last_tokens[:live_rows] = self._last_tokens[:live_rows]
        # Swap in only once everything is allocated: a failed allocation leaves the batch intact.
        shift = (new_end - live) - window.start
        self.keys, self.values, self._mask = keys, values, mask
        self._positions, self._last_tokens = positions, last_tokens
        self._sampling.grow(row_capacity)
        self._row_start = [start + shift for start in self._row_start]
        window.start, window.end = new_end - live, new_end


class SentenceEmbeddingRunner:
    """An encoder plus sentence-transformers pooling and L2 normalisation, one forward per batch."""

    def __init__(self, model: Any, device: torch.device, pooling: str, pad_token_id: int) -> None:
        if pooling not in {"mean", "cls", "max", "mean_sqrt_len_tokens", "lasttoken"}:
            raise ValueError(f"unsupported pooling mode {pooling!r}")
        self._model = model
        self._device = device
        self._pooling = pooling
        self._pad_token_id = pad_token_id

    @property
    def dimensions(self) -> int:
        return int(self._model.config.hidden_size)

    @torch.inference_mode()
    def embed(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        lengths = [len(ids) for ids in batch]
        width = max(lengths)
        input_ids = torch.full((len(batch), width), self._pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : lengths[row]] = torch.tensor(list(ids), dtype=torch.long)
            attention[row, : lengths[row]] = 1
        input_ids = input_ids.to(self._device)
        attention = attention.to(self._device)
        hidden = self._model(
            input_ids=input_ids, attention_mask=attention
        ).last_hidden_state.float()
        mask = attention[:, :, None].to(hidden.dtype)
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        elif self._pooling == "lasttoken":
            pooled = hidden[torch.arange(len(batch), device=self._device), attention.sum(-1) - 1]
        elif self._pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).amax(dim=1)
        else:
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp_min(1.0)
            pooled = summed / (counts.sqrt() if self._pooling == "mean_sqrt_len_tokens" else counts)
        normalised = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        return [[float(value) for value in row] for row in normalised.cpu().tolist()]

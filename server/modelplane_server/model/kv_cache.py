"""The running batch's KV cache: preallocated buffers (`[rows, kv_heads, columns, head_dim]` per
layer) that all rows share column-wise, left-padded:

- every row's last token sits in the same column, so one decode step is one `[rows, 1]` forward that
  writes one new column in place (no per-step `torch.cat` of the whole cache as in `DynamicCache`);
- newcomers, prefilled in their own `DynamicCache`, are copied into free rows so that their prompt
  ends at the shared last column (left padding, masked out);
- finished rows leave by moving the last rows into their slots (only moved rows are copied), and the
  window's leading all-padding columns are dropped by moving a start index, not by copying.

The model sees the buffers through a transformers `Cache` whose layers return views of the window,
so any `AutoModelForCausalLM` whose attention goes through `Cache.update` works. Beside the keys and
values, `SlotKVCache` keeps what else lives per row (attention mask, position, last token, the
sequence id, and each row's sampling state), so that rows move together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer

from modelplane_server.engine.contract import SamplingParams
from modelplane_server.model.sampling import RowProcessor, SamplingState

_INITIAL_COLUMNS = 256
_INITIAL_ROWS = 8
# Free columns kept beyond the context length, so a full-context window is compacted every so
# many steps rather than every step.
_COLUMN_HEADROOM = 64


class _Window:
    """Which rows and columns of the buffers are live. Shared by the cache and its layers."""

    def __init__(self) -> None:
        self.rows = 0
        self.start = 0  # first column any live row uses
        self.end = 0  # one past the last written column; the next decode step writes here


class _SlotLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]  # transformers' hook is untyped
    """One layer's view of the runner's buffers, in the shape transformers' attention expects."""

    is_sliding = False
    is_croppable = False

    def __init__(self, kv_cache: SlotKVCache, layer_index: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._kv_cache = kv_cache
        self._layer_index = layer_index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """The runner allocates the buffers; nothing to do here."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        window = self._kv_cache.window
        keys = self._kv_cache.keys[self._layer_index]
        values = self._kv_cache.values[self._layer_index]
        length = key_states.shape[-2]
        keys[: window.rows, :, window.end : window.end + length] = key_states
        values[: window.rows, :, window.end : window.end + length] = value_states
        return (
            keys[: window.rows, :, window.start : window.end + length],
            values[: window.rows, :, window.start : window.end + length],
        )

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        window = self._kv_cache.window
        return window.end - window.start + query_length, 0

    def get_seq_length(self) -> int:
        window = self._kv_cache.window
        return window.end - window.start

    def get_max_length(self) -> int:
        return -1


def prefilled_states(cache: DynamicCache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(f"unexpected prefill cache layer {type(layer).__name__}")
        keys.append(layer.keys)
        values.append(layer.values)
    return keys, values


class SlotKVCache:
    """The rows of the running batch, identified by the engine's sequence ids."""

    def __init__(
        self,
        config: Any,
        device: torch.device,
        sampling: SamplingState,
        max_batch_size: int,
        context_length: int,
    ) -> None:
        self._device = device
        self._sampling = sampling
        self._max_batch_size = max_batch_size
        # The window never exceeds the longest sequence, so buffers need at most the context plus
        # some headroom; without this cap the doubling could reserve twice the context per row.
        self._max_columns = context_length + _COLUMN_HEADROOM
        self._num_layers = int(config.num_hidden_layers)
        self.window = _Window()
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask = torch.zeros((0, 0), dtype=torch.bool, device=device)
        self.positions = torch.zeros(0, dtype=torch.long, device=device)
        self.last_tokens = torch.zeros(0, dtype=torch.long, device=device)
        self.row_seq: list[int] = []
        self.row_start: list[int] = []
        # What the model's forward gets as `past_key_values`.
        self.layers = Cache(layers=[_SlotLayer(self, index) for index in range(self._num_layers)])

    @torch.inference_mode()
    def release(self, seq_ids: Sequence[int]) -> None:
        """Drop sequences from the running batch (finished, cancelled, failed); skip unknown ids."""
        leaving = set(seq_ids)
        if not leaving.intersection(self.row_seq):
            return
        rows = self.window.rows
        kept = [row for row in range(rows) if self.row_seq[row] not in leaving]
        remaining = len(kept)
        # Fill the holes below `remaining` with the survivors above it: only those rows are copied.
        holes = [row for row in range(remaining) if self.row_seq[row] in leaving]
        movers = [row for row in kept if row >= remaining]
        if holes:
            self._move_rows(movers, holes)
        self.row_seq = self.row_seq[:remaining]
        self.row_start = self.row_start[:remaining]
        self.window.rows = remaining
        if remaining:
            self.window.start = min(self.row_start)
        else:
            self.window.start = self.window.end = 0

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
        for tensor in (self.mask, self.positions, self.last_tokens):
            tensor[target_index] = tensor[source_index]
        self._sampling.move_rows(sources, targets)
        for source, target in zip(sources, targets, strict=True):
            self.row_seq[target] = self.row_seq[source]
            self.row_start[target] = self.row_start[source]

    def merge(
        self,
        *,
        seq_ids: Sequence[int],
        params: Sequence[SamplingParams],
        processors: Sequence[RowProcessor | None],
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
        layer_keys, layer_values = prefilled_states(prefill_cache)
        self.reserve(first_row + count, width, 1, like=(layer_keys[0], layer_values[0]))
        window = self.window
        end = window.end
        rows = slice(first_row, first_row + count)
        for index in range(self._num_layers):
            self.keys[index][rows, :, end - width : end] = layer_keys[index]
            self.values[index][rows, :, end - width : end] = layer_values[index]
        self.mask[rows] = False
        self.mask[rows, end - width : end] = attention.bool()
        self.positions[rows] = torch.tensor(lengths, device=self._device)
        self._sampling.set_rows(
            first_row,
            [param.temperature for param in params],
            [param.top_p for param in params],
            [param.top_k for param in params],
            [param.seed for param in params],
            processors=processors,
        )
        self.row_seq.extend(seq_ids)
        self.row_start.extend(end - length for length in lengths)
        window.rows = first_row + count
        window.start = min(window.start if first_row else end, end - width)
        return first_row

    def reserve(
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
        row_capacity = self.mask.shape[0]
        column_capacity = self.mask.shape[1]
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
        mask[:live_rows, new_columns] = self.mask[:live_rows, old_columns]
        positions = torch.zeros(row_capacity, dtype=torch.long, device=self._device)
        positions[:live_rows] = self.positions[:live_rows]
        last_tokens = torch.zeros(row_capacity, dtype=torch.long, device=self._device)
        last_tokens[:live_rows] = self.last_tokens[:live_rows]
        # Swap in only once everything is allocated: a failed allocation leaves the batch intact.
        shift = (new_end - live) - window.start
        self.keys, self.values, self.mask = keys, values, mask
        self.positions, self.last_tokens = positions, last_tokens
        self._sampling.grow(row_capacity)
        self.row_start = [start + shift for start in self.row_start]
        window.start, window.end = new_end - live, new_end

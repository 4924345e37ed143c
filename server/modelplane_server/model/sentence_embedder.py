"""The embedding forward: an encoder plus sentence-transformers pooling and L2 normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


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

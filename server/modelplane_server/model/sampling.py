"""Per-row token sampling for a mixed batch: greedy, temperature, top-k, top-p and per-request
seeds, after each row's logit processing (`logit_bias`, `min_tokens`, the repetition, presence
and frequency penalties, and a grammar's token mask); rows that ask for logprobs keep their last
token's.

Each row of a batch carries its own `SamplingParams`; the maths is vectorised over the rows (one
sort and one softmax for all sampling rows) so the cost per step does not grow with Python loops
over the vocabulary. Seeded rows draw from their own `torch.Generator`, so a seeded request samples
the same tokens whatever else shares its batch. Runs on the engine's step thread only (it is torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from modelplane_server.engine.contract import SampledLogprob, SamplingParams
from modelplane_server.model.grammar import RowGrammar, apply_grammar_masks


class RowProcessor:
    """One row's logit processing, in vLLM's order: `logit_bias` is added; stop and EOS ids are
    masked until `min_tokens` tokens are out; then the repetition penalty (over prompt and output
    tokens, as in transformers and vLLM: positive logits divided, negative multiplied) and the
    presence and frequency penalties (over output tokens, as OpenAI defines them) apply.

    Rows without any of these get no processor, so the common case costs nothing. The counts are
    dense vectors over the vocabulary, made at the first step (the logits give its size)."""

    def __init__(
        self,
        params: SamplingParams,
        prompt: Sequence[int],
        stop_ids: Iterable[int],
        grammar: RowGrammar | None = None,
    ) -> None:
        self._params = params
        self.grammar = grammar
        self._prompt = tuple(prompt)
        self._stop_ids = sorted(set(stop_ids))
        self._generated = 0
        self.sampled: SampledLogprob | None = None  # the last token's, when logprobs are asked
        self._counts: torch.Tensor | None = None  # output-token counts
        self._seen: torch.Tensor | None = None  # prompt or output, for the repetition penalty

    @staticmethod
    def needed(params: SamplingParams) -> bool:
        return bool(
            params.logprobs is not None
            or params.logit_bias
            or params.min_tokens
            or params.presence_penalty
            or params.frequency_penalty
            or params.repetition_penalty != 1.0
            or params.grammar is not None
        )

    def apply(self, logits: torch.Tensor) -> None:
        """Process one row's logits (float32, `[vocab]`) in place."""
        params = self._params
        if self._counts is None:
            self._counts = torch.zeros(logits.shape[-1], dtype=torch.float32, device=logits.device)
            self._seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            if self._prompt:
                self._seen[torch.tensor(self._prompt, device=logits.device)] = True
        assert self._seen is not None
        if params.logit_bias:
            ids = torch.tensor([token for token, _ in params.logit_bias], device=logits.device)
            bias = torch.tensor([value for _, value in params.logit_bias], device=logits.device)
            logits.index_add_(0, ids, bias)
        if self._generated < params.min_tokens and self._stop_ids:
            logits[torch.tensor(self._stop_ids, device=logits.device)] = float("-inf")
        if params.repetition_penalty != 1.0:
            penalised = torch.where(
                logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty
            )
            logits.copy_(torch.where(self._seen, penalised, logits))
        if params.frequency_penalty:
            logits.sub_(params.frequency_penalty * self._counts)
        if params.presence_penalty:
            logits.sub_(params.presence_penalty * (self._counts > 0).float())

    def observe(self, token: int, logits: torch.Tensor) -> None:
        """Count the token this row just produced from these (processed) `logits`."""
        if self.grammar is not None:
            self.grammar.consume(token)
        if self._params.logprobs is not None:
            logprobs = logits.float().log_softmax(dim=-1)
            top = logprobs.topk(min(self._params.logprobs, logprobs.shape[-1]))
            self.sampled = SampledLogprob(
                float(logprobs[token]),
                tuple(
                    (int(index), float(value))
                    for index, value in zip(top.indices.tolist(), top.values.tolist(), strict=True)
                ),
            )
        self._generated += 1
        if self._counts is not None and self._seen is not None:
            self._counts[token] += 1
            self._seen[token] = True


class SamplingState:
    """The sampling parameters of the rows of a running batch, kept as device tensors.

    Rows are addressed by position; `set_rows` and `move_rows` mirror what the runner does to its KV
    cache rows, so row i here always belongs to row i of the cache.
    """

    def __init__(self, capacity: int, device: torch.device) -> None:
        self._device = device
        self.temperature = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.top_p = torch.ones(capacity, dtype=torch.float32, device=device)
        self.top_k = torch.zeros(capacity, dtype=torch.long, device=device)
        # Python mirrors let the hot path decide what work is needed without a device sync.
        self._sampling: list[bool] = [False] * capacity
        self._filtering: list[bool] = [False] * capacity
        self.generators: list[torch.Generator | None] = [None] * capacity
        self.processors: list[RowProcessor | None] = [None] * capacity
        self._default_generator = torch.Generator(device=device)
        self._default_generator.seed()

    @property
    def capacity(self) -> int:
        return len(self._sampling)

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        self.temperature = torch.cat([self.temperature, self.temperature.new_zeros(extra)])
        self.top_p = torch.cat([self.top_p, self.top_p.new_ones(extra)])
        self.top_k = torch.cat([self.top_k, self.top_k.new_zeros(extra)])
        self._sampling += [False] * extra
        self._filtering += [False] * extra
        self.generators += [None] * extra
        self.processors += [None] * extra

    def set_rows(
        self,
        start: int,
        temperatures: Sequence[float],
        top_ps: Sequence[float],
        top_ks: Sequence[int],
        seeds: Sequence[int | None],
        *,
        processors: Sequence[RowProcessor | None] = (),
    ) -> None:
        stop = start + len(temperatures)
        self.temperature[start:stop] = torch.tensor(temperatures, dtype=torch.float32)
        self.top_p[start:stop] = torch.tensor(top_ps, dtype=torch.float32)
        self.top_k[start:stop] = torch.tensor(top_ks, dtype=torch.long)
        for offset, (temperature, top_p, top_k, seed) in enumerate(
            zip(temperatures, top_ps, top_ks, seeds, strict=True)
        ):
            row = start + offset
            self._sampling[row] = temperature > 0
            self._filtering[row] = temperature > 0 and (top_k > 0 or top_p < 1.0)
            generator = None
            if seed is not None and temperature > 0:
                generator = torch.Generator(device=self._device)
                generator.manual_seed(seed)
            self.generators[row] = generator
            self.processors[row] = processors[offset] if processors else None

    def move_rows(self, sources: list[int], targets: list[int]) -> None:
        """Copy rows `sources` onto rows `targets` (used when the runner compacts its batch)."""
        source_index = torch.tensor(sources, device=self._device)
        target_index = torch.tensor(targets, device=self._device)
        for tensor in (self.temperature, self.top_p, self.top_k):
            tensor[target_index] = tensor[source_index]
        for source, target in zip(sources, targets, strict=True):
            self._sampling[target] = self._sampling[source]
            self._filtering[target] = self._filtering[source]
            self.generators[target] = self.generators[source]
            self.processors[target] = self.processors[source]

    def sample(self, logits: torch.Tensor, first_row: int) -> torch.Tensor:
        """Pick one token per row of `logits` ([rows, vocab]) for batch rows from `first_row`."""
        processed = [
            (offset, self.processors[first_row + offset])
            for offset in range(logits.shape[0])
            if self.processors[first_row + offset] is not None
        ]
        if processed:
            logits = logits.float()
            for offset, processor in processed:
                assert processor is not None
                processor.apply(logits[offset])
            apply_grammar_masks(
                logits,
                [
                    (offset, processor.grammar)
                    for offset, processor in processed
                    if processor is not None and processor.grammar is not None
                ],
            )
        tokens = self._pick(logits, first_row)
        for offset, processor in processed:
            assert processor is not None
            processor.observe(int(tokens[offset]), logits[offset])
        return tokens

    def _pick(self, logits: torch.Tensor, first_row: int) -> torch.Tensor:
        tokens = logits.argmax(dim=-1)
        sampling = [
            (offset, first_row + offset)
            for offset in range(logits.shape[0])
            if self._sampling[first_row + offset]
        ]
        if not sampling:
            return tokens
        offsets = torch.tensor([offset for offset, _ in sampling], device=logits.device)
        batch_rows = [row for _, row in sampling]
        rows = torch.tensor(batch_rows, device=logits.device)
        scaled = (
            logits.index_select(0, offsets).float()
            / self.temperature.index_select(0, rows)[:, None]
        )
        if any(self._filtering[row] for row in batch_rows):
            sorted_logits, sorted_tokens = scaled.sort(dim=-1, descending=True)
            sorted_logits = _filter_sorted(
                sorted_logits, self.top_k.index_select(0, rows), self.top_p.index_select(0, rows)
            )
            picks = self._draw(sorted_logits.softmax(dim=-1), batch_rows)
            chosen = sorted_tokens.gather(1, picks[:, None]).squeeze(1)
        else:
            chosen = self._draw(scaled.softmax(dim=-1), batch_rows)
        tokens[offsets] = chosen
        return tokens

    def _draw(self, probabilities: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """One multinomial draw per row: seeded rows from their own generator, the rest together."""
        seeded = [i for i, row in enumerate(rows) if self.generators[row] is not None]
        if not seeded:
            return torch.multinomial(probabilities, 1, generator=self._default_generator).squeeze(1)
        picks = torch.empty(len(rows), dtype=torch.long, device=probabilities.device)
        unseeded = [i for i, row in enumerate(rows) if self.generators[row] is None]
        if unseeded:
            unseeded_index = torch.tensor(unseeded, device=probabilities.device)
            picks[unseeded_index] = torch.multinomial(
                probabilities.index_select(0, unseeded_index), 1, generator=self._default_generator
            ).squeeze(1)
        for i in seeded:
            picks[i] = torch.multinomial(probabilities[i], 1, generator=self.generators[rows[i]])[0]
        return picks


def _filter_sorted(
    sorted_logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Mask (to -inf) what top-k and then top-p remove from logits sorted in descending order."""
    vocabulary = sorted_logits.shape[-1]
    ranks = torch.arange(vocabulary, device=sorted_logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocabulary)[:, None]
    sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
    probabilities = sorted_logits.softmax(dim=-1)
    # A token is dropped when the tokens ranked above it already reach top_p; the first never is.
    mass_before = probabilities.cumsum(dim=-1) - probabilities
    return sorted_logits.masked_fill(mass_before >= top_p[:, None], float("-inf"))

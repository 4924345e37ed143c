"""Grammar-constrained decoding (`model.grammar`): the bitmask arithmetic, the per-row masks in a
mixed batch, and the engine on a tiny random Llama, whose constrained output matches its schema
however random its weights while its unconstrained neighbours stay as they are alone."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from modelplane_server.engine.contract import (
    FinishReason,
    GenerationConfig,
    GenerationRequest,
    InvalidRequestError,
    SamplingParams,
)
from modelplane_server.model.grammar import GrammarCompiler, apply_grammar_masks, unpack_bitmask
from modelplane_server.model.loading import load_generation_engine
from modelplane_server.model.sampling import RowProcessor, SamplingState
from modelplane_server.openai.structured import json_schema_grammar

CPU = torch.device("cpu")
DIGIT = {"type": "integer", "minimum": 0, "maximum": 9}
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": DIGIT},
    "required": ["ok", "n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def compiler(tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


def test_unpack_bitmask_reads_bit_j_of_word_i_as_token_32i_plus_j() -> None:
    # -1 sets all 32 bits; -2**31 only bit 31 (the sign bit, so shifts must keep it to one bit).
    bitmask = torch.tensor([[0b101, -1], [0, -(2**31)]], dtype=torch.int32)
    allowed = unpack_bitmask(bitmask, 40)
    assert allowed.shape == (2, 40)
    assert allowed[0].nonzero().flatten().tolist() == [0, 2, *range(32, 40)]
    assert allowed[1].nonzero().flatten().tolist() == []
    assert unpack_bitmask(bitmask, 64)[1].nonzero().flatten().tolist() == [63]


def test_only_the_constrained_row_is_masked_and_it_follows_its_grammar(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    vocabulary = len(tokenizer)
    grammar = json_schema_grammar(DIGIT)
    row = compiler.row(grammar)
    logits = torch.randn(3, vocabulary, generator=torch.Generator().manual_seed(0))
    original = logits.clone()
    apply_grammar_masks(logits, [(1, row)])
    assert torch.equal(logits[0], original[0])
    assert torch.equal(logits[2], original[2])
    allowed = {tokenizer.decode([token]) for token in logits[1].isfinite().nonzero().flatten()}
    assert allowed == {str(digit) for digit in range(10)}
    digit = int(logits[1].argmax())
    row.consume(digit)
    logits = torch.randn(1, vocabulary)
    apply_grammar_masks(logits, [(0, row)])
    assert logits[0].isfinite().nonzero().flatten().tolist() == [tokenizer.eos_token_id]


def test_a_constrained_row_samples_only_what_its_grammar_allows(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    params = SamplingParams(temperature=1.0, seed=3, grammar=json_schema_grammar(SCHEMA))
    state = SamplingState(2, CPU)
    processor = RowProcessor(params, (), (), compiler.row(params.grammar or ""))
    state.set_rows(0, [0.0, 1.0], [1.0, 1.0], [0, 0], [None, 3], processors=[None, processor])
    generator = torch.Generator().manual_seed(1)
    text = []
    for _ in range(40):
        token = int(state.sample(torch.randn(2, len(tokenizer), generator=generator), 0)[1])
        if token == tokenizer.eos_token_id:
            break
        text.append(tokenizer.decode([token]))
    value = json.loads("".join(text))
    assert set(value) == {"ok", "n"}
    assert isinstance(value["ok"], bool)
    assert 0 <= value["n"] <= 9


def test_a_complete_grammar_ends_its_row_even_while_min_tokens_holds_eos_back(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    """min_tokens masks EOS; a grammar that allows only EOS would leave nothing to sample (NaN
    probabilities fail the whole step): the grammar wins and the row ends."""
    eos = tokenizer.eos_token_id
    params = SamplingParams(
        temperature=1.0, seed=3, min_tokens=20, grammar=json_schema_grammar({"type": "boolean"})
    )
    state = SamplingState(2, CPU)
    processor = RowProcessor(params, (), (eos,), compiler.row(params.grammar or ""))
    state.set_rows(0, [1.0, 1.0], [1.0, 1.0], [0, 0], [1, 3], processors=[None, processor])
    generator = torch.Generator().manual_seed(1)
    tokens = []
    for _ in range(10):
        picked = state.sample(torch.randn(2, len(tokenizer), generator=generator), 0)
        tokens.append(int(picked[1]))
        if tokens[-1] == eos:
            break
    assert tokens[-1] == eos
    assert tokenizer.decode(tokens[:-1]) in {"true", "false"}


def test_a_bad_grammar_is_reported_and_cached(compiler: GrammarCompiler) -> None:
    bad = json_schema_grammar({"type": "no-such-type"})
    assert compiler.error(bad)
    assert compiler.error(json_schema_grammar(SCHEMA)) is None
    assert compiler.error.cache_info().currsize >= 2  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_the_engine_constrains_one_row_and_leaves_its_neighbours_alone(
    tiny_llama_dir: Path,
) -> None:
    engine = load_generation_engine(
        GenerationConfig(model=str(tiny_llama_dir), dtype="float32", device="cpu", max_batch_size=4)
    )
    await engine.start()
    try:
        prompt = tuple(engine.encode("The answer is"))

        def request(name: str, **params: Any) -> GenerationRequest:
            sampling = SamplingParams(**{"max_tokens": 24, "temperature": 0.0, **params})
            return GenerationRequest(name, prompt, sampling, arrival_time=time.monotonic())

        async def text(generation: GenerationRequest) -> tuple[str, FinishReason | None]:
            deltas = [delta async for delta in engine.generate(generation)]
            return "".join(delta.text for delta in deltas), deltas[-1].finish_reason

        alone = await text(request("alone", ignore_eos=True))
        together = await asyncio.gather(
            text(request("free", ignore_eos=True)),
            text(request("json", grammar=json_schema_grammar(SCHEMA), max_tokens=60)),
        )
        assert together[0] == alone
        constrained, reason = together[1]
        assert reason is FinishReason.STOP, constrained
        value = json.loads(constrained)
        assert set(value) == {"ok", "n"}
        with pytest.raises(InvalidRequestError) as raised:
            engine.generate(request("bad", grammar=json_schema_grammar({"type": 3})))
        assert raised.value.param == "grammar"
    finally:
        await engine.stop(1.0)

"""Detokenisation and stop strings (pure text logic), with the real SmolLM2 byte-level tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from modelplane_server.engine.detokenize import IncrementalDetokenizer, StopStringMatcher, TextCodec


@pytest.fixture(scope="module")
def codec(smollm2_tokenizer_dir: Path) -> TextCodec:
    return TextCodec(AutoTokenizer.from_pretrained(smollm2_tokenizer_dir), "smol", 8192)


@pytest.mark.parametrize(
    "text",
    [
        "Hello world, how are you?",
        "naïve café — 日本語のテキスト 😀🎉 done",
        "  leading spaces\nand lines",
    ],
)
def test_token_by_token_deltas_rebuild_the_text_without_partial_characters(
    codec: TextCodec, text: str
) -> None:
    prompt = codec.encode("Prompt:")
    generated = codec.encode(text)[0:]
    detokenizer = IncrementalDetokenizer(codec, prompt)
    deltas = [detokenizer.add([token]) for token in generated]
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == codec.decode(generated)
    # Multi-byte characters span several byte-level tokens, so some steps emit nothing.
    if "😀" in text:
        assert "" in deltas


def test_several_tokens_at_once_give_the_same_text(codec: TextCodec) -> None:
    generated = codec.encode("chunks of text arrive 🎉 together sometimes")
    one_by_one = IncrementalDetokenizer(codec, [])
    in_chunks = IncrementalDetokenizer(codec, [])
    expected = "".join(one_by_one.add([token]) for token in generated)
    chunks = [generated[i : i + 3] for i in range(0, len(generated), 3)]
    assert "".join(in_chunks.add(chunk) for chunk in chunks) == expected


def test_stop_matcher_holds_back_possible_prefixes_and_cuts_at_the_stop() -> None:
    matcher = StopStringMatcher(["<end>", "STOP"])
    emitted = []
    for piece in ["Hello <e", "n", "d is not here, ST", "OP and more"]:
        text, stopped = matcher.feed(piece)
        emitted.append(text)
        if stopped:
            break
    assert emitted == ["Hello ", "", "<end is not here, ", ""]
    assert stopped


def test_stop_matcher_flushes_held_text_when_generation_ends_otherwise() -> None:
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("almost ST") == ("almost ", False)
    assert matcher.flush() == "ST"
    assert StopStringMatcher([]).feed("anything") == ("anything", False)


def test_chat_template_and_fallback(codec: TextCodec) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    ids = codec.apply_chat_template(messages)
    assert codec.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")

    class NoTemplate:
        chat_template = None

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, Any]:
            return {"input_ids": [ord(c) for c in text]}

    fallback = TextCodec(NoTemplate(), "plain", 100)
    assert "".join(map(chr, fallback.apply_chat_template(messages))) == "user: Hi\nassistant:"

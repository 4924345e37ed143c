"""Sampling and prompt parameters beyond the basics, through the official `openai` client against
the server as a real process (a tiny random Llama with SmolLM2's tokenizer): `logit_bias`,
`min_tokens`, the presence, frequency and repetition penalties, token-id prompts and `echo`.
The arithmetic of each logit processor is checked in tests/server/engine/test_engine_sampling.py;
here each is shown to reach the batch through the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"
GREEDY: dict[str, Any] = {"model": MODEL, "temperature": 0}
NO_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def parity_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path
) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("logs"),
        f"--model={tiny_llama_dir}",
        f"--served-model-name={MODEL}",
        "--embedding-model=none",
        "--device=cpu",
        "--max-batch-size=8",
    ) as server:
        yield server


@pytest.fixture
def client(parity_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=parity_server.url + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def complete(client: openai.OpenAI, prompt: str | list[int], **fields: Any) -> Any:
    extra = {**NO_EOS, **fields.pop("extra_body", {})}
    return client.completions.create(prompt=prompt, **GREEDY, **fields, extra_body=extra)


def test_logit_bias_forces_a_token_in_completions_and_chat(
    client: openai.OpenAI, tokenizer: Any
) -> None:
    forced = tokenizer.encode(" Paris", add_special_tokens=False)[0]
    completion = complete(client, "Hello", max_tokens=4, logit_bias={str(forced): 100})
    assert completion.choices[0].text == tokenizer.decode([forced] * 4)
    chat = client.chat.completions.create(
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        logit_bias={str(forced): 100},
        extra_body=NO_EOS,
        **GREEDY,
    )
    assert chat.choices[0].message.content == tokenizer.decode([forced] * 3)


def test_min_tokens_holds_back_eos(client: openai.OpenAI, tokenizer: Any) -> None:
    eos = {str(tokenizer.eos_token_id): 100}
    quick = client.completions.create(prompt="Hello", max_tokens=8, logit_bias=eos, **GREEDY)
    assert quick.usage is not None
    assert (quick.choices[0].finish_reason, quick.usage.completion_tokens) == ("stop", 1)
    held = client.completions.create(
        prompt="Hello", max_tokens=8, logit_bias=eos, extra_body={"min_tokens": 3}, **GREEDY
    )
    assert held.usage is not None
    # Three tokens that are not EOS, then the EOS that the bias makes certain.
    assert (held.choices[0].finish_reason, held.usage.completion_tokens) == ("stop", 4)
    assert held.choices[0].text


@pytest.mark.parametrize(
    "penalty",
    [
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"extra_body": {"repetition_penalty": 10.0}},
    ],
    ids=["frequency", "presence", "repetition"],
)
def test_each_penalty_changes_a_repetitive_greedy_completion(
    client: openai.OpenAI, tokenizer: Any, penalty: dict[str, Any]
) -> None:
    prompt = "the the the the"
    baseline = complete(client, prompt, max_tokens=24).choices[0].text
    tokens = tokenizer.encode(baseline, add_special_tokens=False)
    assert len(set(tokens)) < len(tokens)  # random weights loop: something repeats
    penalised = complete(client, prompt, max_tokens=24, **penalty).choices[0].text
    assert penalised != baseline


def test_a_token_id_prompt_completes_as_its_text_would(
    client: openai.OpenAI, tokenizer: Any
) -> None:
    text = "The capital of France is"
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    from_text = complete(client, text, max_tokens=6)
    from_ids = complete(client, ids, max_tokens=6)
    assert from_ids.choices[0].text == from_text.choices[0].text
    assert from_ids.usage.prompt_tokens == len(ids)
    with pytest.raises(openai.BadRequestError) as outside:
        complete(client, [len(tokenizer) + 5], max_tokens=1)
    assert outside.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as bias:
        complete(client, text, max_tokens=1, logit_bias={str(len(tokenizer) + 5): 1})
    assert bias.value.param == "logit_bias"


def test_echo_prefixes_the_prompt_streamed_or_not(client: openai.OpenAI) -> None:
    prompt = "Once upon a time"
    plain = complete(client, prompt, max_tokens=5).choices[0].text
    echoed = complete(client, prompt, max_tokens=5, echo=True)
    assert echoed.choices[0].text == prompt + plain
    assert echoed.usage.completion_tokens == 5
    stream = client.completions.create(
        prompt=prompt, max_tokens=5, echo=True, stream=True, extra_body=NO_EOS, **GREEDY
    )
    chunks = [chunk.choices[0].text for chunk in stream if chunk.choices]
    assert chunks[0].startswith(prompt)
    assert "".join(chunks) == prompt + plain


def test_n_choices_are_generated_side_by_side(client: openai.OpenAI) -> None:
    sampled = {"model": MODEL, "temperature": 1.0, "seed": 7, "extra_body": NO_EOS}
    one = client.completions.create(prompt="Hello", max_tokens=6, **sampled)
    three = client.completions.create(prompt="Hello", max_tokens=6, n=3, **sampled)
    assert [choice.index for choice in three.choices] == [0, 1, 2]
    assert three.usage is not None
    assert one.usage is not None
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert three.usage.completion_tokens == 18
    # Choice i is seeded with seed + i: the first is the n=1 answer, the others differ from it,
    # and a second run repeats them all.
    texts = [choice.text for choice in three.choices]
    assert texts[0] == one.choices[0].text
    assert len(set(texts)) > 1
    again = client.completions.create(prompt="Hello", max_tokens=6, n=3, **sampled)
    assert [choice.text for choice in again.choices] == texts


def test_n_streamed_chat_choices_arrive_by_index(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Tell me a story"}]
    whole = client.chat.completions.create(
        messages=messages, max_tokens=5, n=2, extra_body=NO_EOS, **GREEDY
    )
    expected = [choice.message.content for choice in whole.choices]
    assert expected[0] == expected[1]  # greedy: the same answer twice
    stream = client.chat.completions.create(
        messages=messages,
        max_tokens=5,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_EOS,
        **GREEDY,
    )
    texts = ["", ""]
    finishes: list[str | None] = [None, None]
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == expected
    assert finishes == ["length", "length"]
    assert usage is not None
    assert usage.completion_tokens == 10


def test_chat_logprobs_report_each_token_and_its_top_alternatives(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Name a city"}]
    chat = client.chat.completions.create(
        messages=messages, max_tokens=4, logprobs=True, top_logprobs=3, extra_body=NO_EOS, **GREEDY
    )
    choice = chat.choices[0]
    assert choice.logprobs is not None
    entries = choice.logprobs.content or []
    assert len(entries) == 4
    assert "".join(entry.token for entry in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.bytes == list(entry.token.encode())
    stream = client.chat.completions.create(
        messages=messages,
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,
        stream=True,
        extra_body=NO_EOS,
        **GREEDY,
    )
    streamed = [
        entry.token
        for chunk in stream
        for part in chunk.choices
        if part.logprobs is not None
        for entry in part.logprobs.content or []
    ]
    assert streamed == [entry.token for entry in entries]


def test_completion_logprobs_use_the_legacy_parallel_lists(client: openai.OpenAI) -> None:
    completion = complete(client, "Hello", max_tokens=5, logprobs=2)
    choice = completion.choices[0]
    assert choice.logprobs is not None
    tokens = choice.logprobs.tokens or []
    assert len(tokens) == 5
    assert "".join(tokens) == choice.text
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs or [])
    assert all(value <= 0 for value in choice.logprobs.token_logprobs or [])
    offsets = choice.logprobs.text_offset or []
    assert offsets == [sum(len(token) for token in tokens[:i]) for i in range(5)]
    echoed = complete(client, "Hello", max_tokens=5, logprobs=0, echo=True).choices[0]
    assert echoed.logprobs is not None
    assert (echoed.logprobs.text_offset or [0])[0] == len("Hello")

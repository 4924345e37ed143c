"""Automatic prefix caching through the official `openai` client against the server as a real
process (a tiny random Llama with SmolLM2's tokenizer): a multi-turn chat with a shared system
prompt reuses the earlier turns' keys and values, answers exactly what a server with the cache off
answers, and shows in /metrics and /stats."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"
SYSTEM = "You are a terse assistant. " + " ".join(f"Rule {i}: answer in kind." for i in range(20))


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    common = (
        f"--model={tiny_llama_dir}",
        f"--served-model-name={MODEL}",
        "--embedding-model=none",
        "--device=cpu",
    )
    with (
        running_server(tmp_path_factory.mktemp("cached"), *common) as cached,
        running_server(
            tmp_path_factory.mktemp("uncached"), *common, "--prefix-cache-tokens=0"
        ) as uncached,
    ):
        yield cached, uncached


def conversation(server: ServerProcess) -> list[str]:
    """Three turns, each sending the whole history back, as chat clients do; greedy."""
    messages: list[Any] = [{"role": "system", "content": SYSTEM}]
    answers: list[str] = []
    with openai.OpenAI(
        base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        for question in ("Name a colour.", "And another one?", "Which do you prefer?"):
            messages.append({"role": "user", "content": question})
            reply = client.chat.completions.create(
                model=MODEL, messages=messages, temperature=0, max_tokens=12
            )
            answer = reply.choices[0].message.content or ""
            answers.append(answer)
            messages.append({"role": "assistant", "content": answer})
    return answers


def counter(server: ServerProcess, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", server.get("/metrics").text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_a_multi_turn_chat_reuses_its_history_and_answers_as_without_the_cache(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    cached, uncached = servers
    assert conversation(cached) == conversation(uncached)
    hits = counter(cached, "modelplane_prefix_cache_hits_total")
    queries = counter(cached, "modelplane_prefix_cache_queries_total")
    assert 0 < hits < queries
    assert counter(uncached, "modelplane_prefix_cache_hits_total") == 0
    generation: Any = cached.stats()["generation"]
    assert generation["prefix_cache"]["hit_tokens"] == hits
    assert generation["prefix_cache"]["cached_tokens"] > 0

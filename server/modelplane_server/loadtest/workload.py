"""The workload of a load test: the prompts (synthetic or from a file) and the distribution of
`max_tokens`."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# The synthetic prompt set: seeded random words, so two runs (and two servers) see the same text.
_TEXT = (
    "the model server batches requests from many clients and streams tokens back while the "
    "operator keeps every deployment ready on its nodes a cluster of machines shares work in "
    "time and memory so each step should carry as many sequences as the budget allows latency "
    "throughput queue cache kernel tensor layer attention prompt answer question river mountain "
    "city garden music light window paper story planet ocean forest engine signal network"
)
_WORDS = tuple(_TEXT.split())


@dataclass(frozen=True)
class MaxTokens:
    """A distribution of `max_tokens`: fixed, uniform in [low, high], or capped exponential."""

    kind: Literal["fixed", "uniform", "exponential"]
    low: int
    high: int
    mean: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> MaxTokens:
        """`32` (fixed), `16:64` (uniform), `exp:32:128` (exponential, mean 32, capped at 128)."""
        try:
            if spec.startswith("exp:"):
                mean, cap = spec.removeprefix("exp:").split(":")
                return cls("exponential", 1, int(cap), float(mean))
            if ":" in spec:
                low, high = (int(part) for part in spec.split(":"))
                if low > high:
                    raise ValueError
                return cls("uniform", low, high)
            return cls("fixed", int(spec), int(spec))
        except ValueError:
            raise ValueError(f"bad max-tokens {spec!r}: use N, LOW:HIGH or exp:MEAN:CAP") from None

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.low
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        return max(1, min(self.high, math.ceil(rng.expovariate(1.0 / self.mean))))


@dataclass(frozen=True)
class Prompt:
    """One request's input: a completion prompt or chat messages, and optionally its max_tokens."""

    text: str
    messages: tuple[dict[str, str], ...] = ()
    max_tokens: int | None = None


def synthetic_prompts(count: int, words: tuple[int, int], seed: int) -> list[Prompt]:
    """`count` prompts of seeded random words, each `words[0]..words[1]` words long."""
    rng = random.Random(seed)  # noqa: S311  # a seeded workload, not a secret
    return [
        Prompt(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(*words))))
        for _ in range(count)
    ]


def load_prompts(path: Path) -> list[Prompt]:
    """JSONL: one object per line with `prompt` (a string) or `messages` (chat), and optionally
    `max_tokens`; or one bare JSON string per line."""
    prompts: list[Prompt] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        if isinstance(item, str):
            prompts.append(Prompt(item))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
            prompts.append(Prompt(item["prompt"], max_tokens=item.get("max_tokens")))
        elif isinstance(item, dict) and isinstance(item.get("messages"), list):
            messages = tuple({str(k): str(v) for k, v in m.items()} for m in item["messages"])
            text = "\n".join(message.get("content", "") for message in messages)
            prompts.append(Prompt(text, messages, item.get("max_tokens")))
        else:
            raise ValueError(
                f"{path}:{number}: expected a string, or an object with prompt/messages"
            )
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts

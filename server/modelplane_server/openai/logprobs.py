"""Token logprobs in OpenAI's two shapes: chat's list of entries and the legacy completions'
parallel lists."""

from __future__ import annotations

from collections.abc import Sequence

from modelplane_server.engine.contract import TokenLogprob
from modelplane_server.openai.protocol import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
)


def _top(token: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))


def chat_logprobs(entries: Sequence[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=entry.token,
                logprob=entry.logprob,
                bytes=list(entry.token.encode()),
                top_logprobs=[_top(token, logprob) for token, logprob in entry.top],
            )
            for entry in entries
        ]
    )


def completion_logprobs(entries: Sequence[TokenLogprob], text_offset: int) -> CompletionLogprobs:
    """`text_offset` is where the first entry's token starts in the choice's text."""
    offsets = []
    for entry in entries:
        offsets.append(text_offset)
        text_offset += len(entry.token)
    return CompletionLogprobs(
        tokens=[entry.token for entry in entries],
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=[dict(entry.top) for entry in entries],
        text_offset=offsets,
    )

"""Text in and out of token ids: the tokenizer adapter, incremental detokenisation and stop strings.

`TextCodec` wraps a Hugging Face tokenizer behind the seam's `Tokenizing` protocol (plus decoding).
`IncrementalDetokenizer` turns a growing list of generated ids into text deltas with a sliding
prefix window (the TGI/vLLM scheme), so each step costs O(new tokens) and a delta never ends in half
a UTF-8 character. `StopStringMatcher` finds stop strings across deltas and holds back any tail that
could still become one, so a stop string never leaks into streamed output.

None of this is torch; it runs next to the consumer of each stream (on the event loop), keeping the
engine's step thread free for forward passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

# The chat format used when a tokenizer has no chat template: one "role: content" line per message,
# then an open "assistant:" turn. Documented in the engine's README section; crude but predictable.
FALLBACK_ROLE_SEPARATOR = ": "

# Tokens of prompt context decoded in front of the generated ids, so the first generated token's
# leading space (SentencePiece "▁", byte-level "Ġ") survives decoding, as in vLLM and TGI.
_PREFIX_WINDOW = 5
_REPLACEMENT_CHARACTER = "\ufffd"


class Decoding(Protocol):
    def decode(self, token_ids: Sequence[int]) -> str: ...


class TextCodec:
    """A Hugging Face tokenizer seen through `types.Tokenizing`, plus `decode`."""

    def __init__(self, tokenizer: Any, model_id: str, context_length: int) -> None:
        self._tokenizer = tokenizer
        self._model_id = model_id
        self._context_length = context_length

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of a completion prompt, with special tokens (BOS) as generate() expects."""
        return list(self._tokenizer(text, add_special_tokens=True)["input_ids"])

    @property
    def chat_template_renders_tools(self) -> bool:
        # Templates that support tools read a `tools` variable; the others ignore it.
        template = getattr(self._tokenizer, "chat_template", None)
        return isinstance(template, str) and "tools" in template

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """The chat prompt with an open assistant turn, via the tokenizer's template if any."""
        if getattr(self._tokenizer, "chat_template", None):
            extra = {"tools": list(tools)} if tools else {}
            text = self._tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True, **extra
            )
            # The template already writes BOS and role markers: adding special tokens would double
            # them.
            return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        lines = [
            f"{m.get('role', 'user')}{FALLBACK_ROLE_SEPARATOR}{m.get('content', '')}"
            for m in messages
        ]
        lines.append(f"assistant{FALLBACK_ROLE_SEPARATOR}".rstrip())
        return self.encode("\n".join(lines))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))


class IncrementalDetokenizer:
    """Decodes generated ids a few at a time; only complete characters are ever returned."""

    def __init__(self, codec: Decoding, prompt_token_ids: Sequence[int]) -> None:
        self._codec = codec
        self._ids = list(prompt_token_ids[-_PREFIX_WINDOW:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def add(self, token_ids: Sequence[int]) -> str:
        """Append ids; return the text they complete ("" while a character is partial)."""
        if not token_ids:
            return ""
        self._ids.extend(token_ids)
        prefix_text = self._codec.decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._codec.decode(self._ids[self._prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith(_REPLACEMENT_CHARACTER):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            # Keep the list short: everything before the prefix window is never decoded again.
            if self._prefix_offset > 4 * _PREFIX_WINDOW:
                del self._ids[: self._prefix_offset]
                self._read_offset -= self._prefix_offset
                self._prefix_offset = 0
            return full_text[len(prefix_text) :]
        return ""


class StopStringMatcher:
    """Finds the first stop string in streamed text and holds back tails that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop string was found); a stop ends the text."""
        if not self._stops:
            return text, False
        buffer = self._pending + text
        # `_pending` never holds a whole stop string, so searching the joined buffer finds every
        # match.
        found = [index for index in (buffer.find(stop) for stop in self._stops) if index >= 0]
        if found:
            self._pending = ""
            return buffer[: min(found)], True
        hold = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), hold, -1):
                if buffer.endswith(stop[:length]):
                    hold = length
                    break
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Release held-back text when generation ends for another reason."""
        text, self._pending = self._pending, ""
        return text

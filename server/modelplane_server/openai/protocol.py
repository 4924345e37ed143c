"""OpenAI-compatible wire models: requests, responses and streaming chunks (the error shape is
`http.errors`'s).

Requests accept and ignore fields they do not know (OpenAI clients send extras such as `user` or
`store`), but reject with a 400 naming the parameter every field they know and cannot honour
(`best_of`, `suffix`, tools). The request models own their conversion to engine values
(`sampling_params`, `template_messages`), so the serving code never re-reads raw request fields.
Our own endpoint (`/v1/similarity`) forbids unknown fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from modelplane_server.engine.contract import SamplingParams
from modelplane_server.http.errors import invalid

MAX_STOP_SEQUENCES = 16
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_REPETITION_PENALTY = 10.0
MAX_EMBEDDING_INPUTS = 2048
MAX_SIMILARITY_TEXTS = 256
INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1

Number = Annotated[float, Field(strict=True)]  # strict still takes a JSON int for a float
TokenIds = list[StrictInt]


# --- shared request parts -----------------------------------------------------------------------


class OpenAIRequest(BaseModel):
    """Base of the OpenAI requests: unknown fields pass (and are ignored), known ones are typed
    strictly, so `"max_tokens": "5"` is a 400 as with OpenAI, not a silent coercion."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool = False


def _unsupported(what: str) -> ValueError:
    return ValueError(f"{what} is not supported by this server")


class SamplingFields(OpenAIRequest):
    """The decoding fields completions and chat share."""

    model: StrictStr | None = Field(None, description="the served model id; default: the one model")
    temperature: Number | None = Field(1.0, ge=0.0, le=2.0, description="0 means greedy")
    top_p: Number | None = Field(1.0, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(None, ge=-1, le=INT32_MAX, description="0 or -1 disables it")
    seed: StrictInt | None = Field(None, ge=INT64_MIN, le=UINT64_MAX)
    stop: StrictStr | list[StrictStr] | None = Field(
        None, description=f"up to {MAX_STOP_SEQUENCES} stop strings"
    )
    stop_token_ids: TokenIds | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    ignore_eos: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = Field(
        1, ge=1, le=MAX_CHOICES, description="choices, generated side by side in the batch"
    )
    presence_penalty: Number | None = Field(
        None, ge=-2.0, le=2.0, description="subtracted from every generated token's logit"
    )
    frequency_penalty: Number | None = Field(
        None, ge=-2.0, le=2.0, description="... times how often the token was generated"
    )
    repetition_penalty: Number | None = Field(
        None, gt=0.0, le=MAX_REPETITION_PENALTY, description="vLLM's: >1 discourages repeats"
    )
    logit_bias: dict[str, Annotated[float, Field(strict=True, ge=-100, le=100)]] | None = Field(
        None, description="token id (as a string) -> added to its logit, -100 to 100"
    )
    min_tokens: StrictInt = Field(
        0, ge=0, le=INT32_MAX, description="no EOS or stop token id before this many tokens"
    )
    user: StrictStr | None = None
    priority: StrictInt = Field(
        0, ge=-INT32_MAX, le=INT32_MAX, description="lower runs first (like vLLM); default 0"
    )

    # Each check is a field validator so that the 400's `param` names the field.
    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias is not None and not all(key.isdigit() for key in bias):
            raise ValueError("logit_bias keys must be token ids (non-negative integers)")
        if bias is not None and len(bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} logit_bias entries are allowed")
        return bias

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop strings are allowed")
        if any(not item for item in stops):
            raise ValueError("stop strings must not be empty")
        return stop

    @property
    def requested_max_tokens(self) -> int | None:
        raise NotImplementedError

    @property
    def max_tokens_field(self) -> str:
        """The field a too-large `requested_max_tokens` came from, for the 400's `param`."""
        return "max_tokens"

    @property
    def requested_logprobs(self) -> int | None:
        """How many top logprobs each token reports (0: only its own); None: no logprobs."""
        return None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            seed=self.seed,
            stop=self.stop_strings(),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items()),
            logprobs=self.requested_logprobs,
        )


# --- completions --------------------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    """`POST /v1/completions`. One text prompt per request (a list of one string is accepted)."""

    prompt: StrictStr | list[StrictStr] | TokenIds | list[TokenIds] = Field(
        description="one prompt: text, or token ids (a list of one of either is accepted too)"
    )
    max_tokens: StrictInt | None = Field(16, ge=1, le=INT32_MAX)
    echo: StrictBool = Field(False, description="prefix the completion with the text prompt")
    best_of: StrictInt | None = Field(None, ge=1, le=128, description="only 1")
    logprobs: StrictInt | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="each token's logprob and this many top ones"
    )
    suffix: StrictStr | None = Field(None, description="not supported")

    @field_validator("suffix")
    @classmethod
    def _not_served(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise _unsupported(str(info.field_name))
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, best_of: int | None) -> int | None:
        if best_of not in (None, 1):
            raise _unsupported("best_of > 1")
        return best_of

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def requested_logprobs(self) -> int | None:
        return self.logprobs

    def prompt_input(self) -> str | list[int]:
        """The one prompt, as text or token ids, or an `ApiError` naming `prompt` for what we
        do not serve."""
        prompt = self.prompt
        prompts: list[Any] = (
            [prompt] if isinstance(prompt, str) or _is_token_ids(prompt) else list(prompt)
        )
        if len(prompts) > 1:
            raise invalid("prompt", "only one prompt per request is supported")
        if not prompts or not prompts[0]:
            raise invalid("prompt", "prompt must not be empty")
        if self.echo and not isinstance(prompts[0], str):
            raise invalid("echo", "echo needs a text prompt")
        one: str | list[int] = prompts[0]
        return one


def _is_token_ids(prompt: object) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], int)


# --- chat ---------------------------------------------------------------------------------------


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"] = Field(description="only text parts are supported")
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="tool messages are not supported"
    )
    content: StrictStr | list[TextContentPart]
    name: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    """`POST /v1/chat/completions`; the engine's chat template turns `messages` into a prompt."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(
        None, ge=1, le=INT32_MAX, description="default: what the context has room for"
    )
    max_completion_tokens: StrictInt | None = Field(
        None, ge=1, le=INT32_MAX, description="OpenAI's newer name for max_tokens; wins if both"
    )
    logprobs: StrictBool | None = Field(None, description="each output token's logprob")
    top_logprobs: StrictInt | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="with logprobs: this many top alternatives"
    )
    tools: list[dict[str, Any]] | None = Field(None, description="not supported")
    tool_choice: Any = Field(None, description="only 'none'")
    functions: list[dict[str, Any]] | None = Field(None, description="not supported")
    function_call: Any = Field(None, description="not supported")
    response_format: dict[str, Any] | None = Field(None, description="only {'type': 'text'}")

    @field_validator("tools", "functions")
    @classmethod
    def _not_served(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise _unsupported(str(info.field_name))
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_calls(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, "none"):
            raise _unsupported(f"{info.field_name} other than 'none'")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value not in (None, {"type": "text"}):
            raise _unsupported("a response_format other than text")
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @property
    def max_tokens_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs=true")
        return top

    def template_messages(self) -> list[dict[str, str]]:
        # `developer` is OpenAI's new name for `system`; chat templates only know the old one.
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


# --- embeddings and similarity ------------------------------------------------------------------


class EmbeddingRequest(OpenAIRequest):
    """`POST /v1/embeddings`: a string or a list of strings; token-id inputs are rejected."""

    model: StrictStr | None = None
    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(
        None, ge=1, le=INT32_MAX, description="only the model's own dimension"
    )
    user: StrictStr | None = None

    def texts(self) -> list[str]:
        """The inputs as texts, or an `ApiError` naming `input`."""
        inputs = [self.input] if isinstance(self.input, str) else self.input
        if not inputs:
            raise invalid("input", "input must not be empty")
        if not all(isinstance(item, str) for item in inputs):
            raise invalid("input", "token-id inputs are not supported; send the input as text")
        if len(inputs) > MAX_EMBEDDING_INPUTS:
            raise invalid("input", f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        texts = [item for item in inputs if isinstance(item, str)]
        for index, text in enumerate(texts):
            if not text:
                raise invalid(
                    "input" if isinstance(self.input, str) else f"input[{index}]",
                    "input must not be an empty string",
                )
        return texts


class SimilarityRequest(BaseModel):
    """`POST /v1/similarity` (ours): cosine similarity between texts.

    Without `queries` the answer is the symmetric `len(texts) x len(texts)` matrix; with them it is
    `len(queries) x len(texts)` (row i: query i against every text), the shape for ranking.
    """

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    texts: list[Annotated[StrictStr, Field(min_length=1)]] = Field(
        min_length=1, max_length=MAX_SIMILARITY_TEXTS
    )
    queries: list[Annotated[StrictStr, Field(min_length=1)]] | None = Field(
        None, min_length=1, max_length=MAX_SIMILARITY_TEXTS
    )


# --- responses ----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    """A completion, and also each chunk of a streamed one (as with OpenAI)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """Only what changed is on the wire: `{"role": "assistant", "content": ""}` first, then
    `{"content": ...}`, and `{}` with the finish reason."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields: dict[str, Any] = handler(self)
        return {name: value for name, value in fields.items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str when encoding_format is base64 (little-endian float32)


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class SimilarityResponse(BaseModel):
    object: Literal["similarity"] = "similarity"
    model: str
    matrix: list[list[float]] = Field(description="matrix[i][j]: cosine(query or text i, text j)")
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "modelplane"
    max_model_len: int | None = None
    kind: Literal["generation", "embedding"]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

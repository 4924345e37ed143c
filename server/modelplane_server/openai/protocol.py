"""OpenAI-compatible wire models: requests, responses and streaming chunks (the error shape is
`http.errors`'s).

Requests accept and ignore fields they do not know (OpenAI clients send extras such as `user` or
`store`), but reject with a 400 naming the parameter every field they know and cannot honour
(`best_of`, `suffix`, the legacy `functions`). The request models own their conversion to engine
values (`sampling_params`, `output_grammar`), so the serving code never re-reads raw request fields.
Our own endpoint (`/v1/similarity`) forbids unknown fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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
    model_validator,
)

from modelplane_server.engine.contract import SamplingParams
from modelplane_server.http.errors import invalid
from modelplane_server.openai.structured import (
    ANY_JSON_OBJECT,
    checked_schema,
    json_schema_grammar,
    tool_call_grammar,
)

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


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema the output must match (decoding is constrained
    to it whether or not `strict` is set)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: StrictStr | None = None
    json_schema: Annotated[dict[str, Any], AfterValidator(checked_schema)] = Field(
        default_factory=dict, alias="schema"
    )
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("a json_schema response_format needs its json_schema")
        return self

    def grammar(self) -> str | None:
        if self.type == "json_object":
            return json_schema_grammar(ANY_JSON_OBJECT)
        if self.type == "json_schema" and self.json_schema is not None:
            return json_schema_grammar(self.json_schema.json_schema or ANY_JSON_OBJECT)
        return None


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
    response_format: ResponseFormat | None = Field(
        None, description="text, json_object or json_schema: constrained decoding"
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

    def output_grammar(self) -> str | None:
        """The grammar the output is constrained to (`SamplingParams.grammar`), if any."""
        return None if self.response_format is None else self.response_format.grammar()

    @property
    def grammar_param(self) -> str:
        """The field an uncompilable `output_grammar` came from, for the 400's `param`."""
        return "response_format"

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
            grammar=self.output_grammar(),
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


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: StrictStr
    arguments: StrictStr = Field(description="the arguments as a JSON text")


class ToolCall(BaseModel):
    """A call the assistant made: in an assistant message of the history, and in a response."""

    model_config = ConfigDict(extra="allow")

    id: StrictStr
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    # Declared before `content`, whose check reads them.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant's calls")
    tool_call_id: StrictStr | None = Field(
        None, validate_default=True, description="the call a tool message answers"
    )
    name: StrictStr | None = None
    content: StrictStr | list[TextContentPart] | None = Field(None, validate_default=True)

    @field_validator("tool_call_id")
    @classmethod
    def _answers_a_call(cls, call_id: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("role") == "tool" and call_id is None:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return call_id

    @field_validator("content")
    @classmethod
    def _content_given(cls, content: Any, info: ValidationInfo) -> Any:
        if content is None and not (
            info.data.get("role") == "assistant" and info.data.get("tool_calls")
        ):
            raise ValueError(f"a {info.data.get('role', 'chat')} message needs content")
        return content

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: StrictStr | None = None
    parameters: Annotated[dict[str, Any], AfterValidator(checked_schema)] | None = Field(
        None, description="a JSON schema of the arguments"
    )
    strict: StrictBool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: StrictStr


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: NamedFunction


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
    tools: list[ToolDefinition] | None = Field(None, description="functions the model may call")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="default: auto with tools, none without"
    )
    parallel_tool_calls: StrictBool | None = Field(
        None, description="accepted; a forced call is one call"
    )
    functions: list[dict[str, Any]] | None = Field(None, description="not supported: use tools")
    function_call: Any = Field(None, description="not supported: use tool_choice")

    @field_validator("functions", "function_call")
    @classmethod
    def _not_served(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, [], "none"):
            raise _unsupported(f"{info.field_name} (the legacy form of tools)")
        return value

    def offered_tools(self) -> list[ToolDefinition]:
        """The tools the prompt describes: none with `tool_choice: none`."""
        return [] if self.tool_choice == "none" else list(self.tools or [])

    def forced_tools(self) -> list[ToolDefinition]:
        """The tools one of which the output must call (`required` or a named function), or an
        `ApiError` naming `tool_choice` when it asks for a call the tools cannot give."""
        choice = self.tool_choice
        if choice is None or choice in ("none", "auto"):
            return []
        tools = list(self.tools or [])
        if isinstance(choice, NamedToolChoice):
            tools = [tool for tool in tools if tool.function.name == choice.function.name]
            if not tools:
                raise invalid(
                    "tool_choice", f"tool_choice names {choice.function.name!r}, not in tools"
                )
        if not tools:
            raise invalid("tool_choice", f"tool_choice {choice!r} needs tools")
        return tools

    def output_grammar(self) -> str | None:
        forced = self.forced_tools()
        if forced:
            return tool_call_grammar(
                [(tool.function.name, tool.function.parameters) for tool in forced]
            )
        return super().output_grammar()

    @property
    def grammar_param(self) -> str:
        return "tools" if self.forced_tools() else "response_format"

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
    """`content` is null beside tool calls (as with OpenAI); `tool_calls` is absent without."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _omit_no_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields: dict[str, Any] = handler(self)
        if fields.get("tool_calls") is None:
            fields.pop("tool_calls", None)
        return fields


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


class _OmitAbsent(BaseModel):
    """Only what is set is on the wire, as in OpenAI's deltas."""

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields: dict[str, Any] = handler(self)
        return {name: value for name, value in fields.items() if value is not None}


class FunctionDelta(_OmitAbsent):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_OmitAbsent):
    """The first delta of a call has its id, type and name; the later ones argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class ChatDelta(_OmitAbsent):
    """Only what changed is on the wire: `{"role": "assistant", "content": ""}` first, then
    `{"content": ...}` or `{"tool_calls": [...]}`, and `{}` with the finish reason."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


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

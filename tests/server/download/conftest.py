"""Fixtures for the download command's tests: a local hub (tests/hfserver.py) serving a tiny
repository and the embedded SmolLM2 GGUF, with huggingface_hub allowed online for it only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest

from hfserver import HubRepo, HubServer, embedded_repo, serving

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
def hub(
    tiny_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[HubServer]:
    """The local hub on 127.0.0.1, `HF_ENDPOINT` pointing at it and no token in the environment.

    The test session runs with HF_HUB_OFFLINE=1 (tests/modelfixtures.py), and huggingface_hub read
    that and its endpoint at import. Only these tests turn offline mode off, so everything the
    library might reach on its own is pointed at the local hub first: its default endpoint and the
    file URL template built from it (the agent-harness registry it fetches for the user agent goes
    there), telemetry off, and a cache
    of the test's own instead of ~/.cache/huggingface.
    """
    repos = [HubRepo.from_files(TINY, tiny_files), embedded_repo(SMOLLM2)]
    with serving(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(
            huggingface_hub.constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(
            huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache"))
        )
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server

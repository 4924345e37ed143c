"""Builds the real engines from the settings; the only route from the HTTP side to torch.

It imports `modelplane_server.model.loading` (torch, transformers) inside the function, so
importing the app, the CLI or the settings stays light. It runs on the app's loading thread.
"""

from __future__ import annotations

from collections.abc import Callable

from modelplane_server.engine.contract import EmbeddingEngine, EngineObserver, GenerationEngine
from modelplane_server.settings import ServerSettings


def load_engines(
    settings: ServerSettings, observer: EngineObserver, progress: Callable[[str], None]
) -> tuple[GenerationEngine, EmbeddingEngine | None]:
    """Set torch's thread count, load and warm up the generation engine, then the embedding
    engine unless disabled."""
    from modelplane_server.model.cpus import torch_threads
    from modelplane_server.model.loading import (
        load_embedding_engine,
        load_generation_engine,
        set_torch_threads,
    )

    threads = torch_threads(settings.torch_threads)
    set_torch_threads(threads)
    progress(f"torch intra-op threads: {threads}")
    generation = load_generation_engine(
        settings.generation_config(),
        observer=observer,
        progress=progress,
        tenants=settings.api_keys().tenants,
    )
    embedding_config = settings.embedding_config()
    if embedding_config is None:
        return generation, None
    embedding = load_embedding_engine(embedding_config, observer=observer, progress=progress)
    return generation, embedding

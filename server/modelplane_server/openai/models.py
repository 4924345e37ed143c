"""`GET /v1/models`: the models this server serves, once they are loaded."""

from __future__ import annotations

import time

from modelplane_server.openai.admission import Admission
from modelplane_server.openai.protocol import ModelCard, ModelList


def model_list(admission: Admission) -> ModelList:
    engines = admission.engines
    if engines is None:
        return ModelList(data=[])
    lifecycle = admission.lifecycle
    created = int(time.time() - (lifecycle.monotonic() - lifecycle.started_at))
    cards = [
        ModelCard(
            id=engines.generation_model_id,
            created=created,
            max_model_len=engines.generation.context_length,
            kind="generation",
        )
    ]
    if engines.embedding is not None:
        cards.append(
            ModelCard(
                id=engines.embedding.model_id,
                created=created,
                max_model_len=engines.embedding.context_length,
                kind="embedding",
            )
        )
    return ModelList(data=cards)

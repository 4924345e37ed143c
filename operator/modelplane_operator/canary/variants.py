"""What each variant runs, and how many replicas the canary gets (pure).

The canary's spec is stable's with `spec.canary`'s overlay: its image, its model (whole), and the
server fields it sets. Its revision is a hash of the overlay, so any edit of `spec.canary` starts a
new canary, while edits elsewhere in the spec (which both variants share) do not.
"""

from __future__ import annotations

import hashlib
import json
import math

from modelplane_operator.models import Canary, ModelDeploymentSpec, ServerConfig


def revision(canary: Canary) -> str:
    """A short, stable hash of the canary's settings and plan."""
    dumped = json.dumps(canary.model_dump(mode="json", exclude_unset=True), sort_keys=True)
    return hashlib.sha256(dumped.encode()).hexdigest()[:10]


def canary_spec(spec: ModelDeploymentSpec, canary: Canary) -> ModelDeploymentSpec:
    """Stable's spec with the canary's overlay applied (validated again as a whole)."""
    server = spec.server
    if canary.server is not None:
        overlay = {field: getattr(canary.server, field) for field in canary.server.model_fields_set}
        server = ServerConfig.model_validate({**spec.server.model_dump(), **overlay})
    model = spec.model
    if canary.model is not None:
        # Clients name one model whichever variant answers.
        served = canary.model.served_model_name or spec.model.served_model_name
        model = canary.model.model_copy(update={"served_model_name": served})
    return spec.model_copy(
        update={
            "image": canary.image or spec.image,
            "model": model,
            "server": server,
            "canary": None,
        }
    )


def canary_replicas(canary: Canary, stable_replicas: int, weight: int) -> int:
    """The canary's replicas at `weight` percent: as set, or its share of the pool (at least 1)."""
    if canary.replicas is not None:
        return canary.replicas
    return max(1, math.ceil(stable_replicas * weight / 100))


def ratio_replicas(stable_replicas: int, weight: int) -> int:
    """Canary replicas for a split by replica ratio behind one Service: k / (n + k) near weight."""
    if weight >= 100:
        return max(1, stable_replicas)
    return max(1, round(stable_replicas * weight / (100 - weight)))


def ratio_weight(stable_replicas: int, canary_replicas: int) -> int:
    """The percent of requests a replica-ratio split really sends to the canary."""
    total = stable_replicas + canary_replicas
    return 0 if total == 0 else round(100 * canary_replicas / total)

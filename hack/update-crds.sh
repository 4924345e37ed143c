#!/usr/bin/env bash
# Regenerate crds/ from the pydantic models (operator/modelplane_operator/models.py).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

"${VENV}/bin/python" -m modelplane_operator.crd > crds/modeldeployments.modelplane.io.yaml
log "wrote crds/modeldeployments.modelplane.io.yaml"
"${VENV}/bin/python" -m modelplane_operator.model_cache_crd > crds/modelcaches.modelplane.io.yaml
log "wrote crds/modelcaches.modelplane.io.yaml"

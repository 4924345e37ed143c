#!/usr/bin/env bash
# Write docs/api.md, the API reference, from the CRD the models generate.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

"${VENV}/bin/python" -m modelplane_operator.api_docs > docs/api.md
log "wrote docs/api.md"
"${VENV}/bin/python" -m modelplane_operator.api_docs ModelCache > docs/api-modelcache.md
log "wrote docs/api-modelcache.md"

#!/usr/bin/env bash
# Fail if crds/ is not what the models generate (run hack/update-crds.sh to fix).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

generated="$(mktemp -d)"
trap 'rm -rf "${generated}"' EXIT
"${VENV}/bin/python" -m modelplane_operator.crd > "${generated}/modeldeployments.modelplane.io.yaml"
"${VENV}/bin/python" -m modelplane_operator.model_cache_crd > "${generated}/modelcaches.modelplane.io.yaml"
for crd in modeldeployments modelcaches; do
  if ! diff -u "crds/${crd}.modelplane.io.yaml" "${generated}/${crd}.modelplane.io.yaml"; then
    die "crds/ is stale: run hack/update-crds.sh"
  fi
done
log "crds/ is up to date"

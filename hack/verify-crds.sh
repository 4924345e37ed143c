#!/usr/bin/env bash
# Fail if crds/ is not what the models generate (run hack/update-crds.sh to fix).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

generated="$(mktemp -d)"
trap 'rm -rf "${generated}"' EXIT
"${VENV}/bin/python" -m modelplane_operator.crd > "${generated}/modeldeployments.modelplane.io.yaml"
if ! diff -u crds/modeldeployments.modelplane.io.yaml "${generated}/modeldeployments.modelplane.io.yaml"; then
  die "crds/ is stale: run hack/update-crds.sh"
fi
log "crds/ is up to date"

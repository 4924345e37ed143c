#!/usr/bin/env bash
# Fail if docs/api.md is not what the models generate (run hack/update-api-docs.sh to fix).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

generated="$(mktemp)"
trap 'rm -f "${generated}"' EXIT
"${VENV}/bin/python" -m modelplane_operator.api_docs > "${generated}"
diff -u docs/api.md "${generated}" || die "docs/api.md is stale: run hack/update-api-docs.sh"
"${VENV}/bin/python" -m modelplane_operator.api_docs ModelCache > "${generated}"
diff -u docs/api-modelcache.md "${generated}" || die "docs/api-modelcache.md is stale: run hack/update-api-docs.sh"
log "docs/api.md and docs/api-modelcache.md are up to date"

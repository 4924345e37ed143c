#!/usr/bin/env bash
# Fail if the chart's CRD templates differ from what hack/update-chart-crds.sh would write.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
bash hack/update-chart-crds.sh "$tmp"
for f in "$tmp"/crd-*.yaml; do
  diff -u "charts/modelplane/templates/$(basename "$f")" "$f" \
    || die "charts/modelplane/templates/$(basename "$f") is stale: run hack/update-chart-crds.sh"
done
log "chart CRDs are up to date"

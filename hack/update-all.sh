#!/usr/bin/env bash
# Regenerate every generated file, in dependency order: the chart's CRD templates are copies of
# crds/, so crds/ comes first (a glob would run update-chart-crds.sh first and copy a stale CRD).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

ORDER=(hack/update-crds.sh hack/update-chart-crds.sh hack/update-api-docs.sh hack/update-argocd-cm.sh)
for script in hack/update-*.sh; do
  [ "$script" = hack/update-all.sh ] && continue
  [[ " ${ORDER[*]} " == *" $script "* ]] || die "$script is not in hack/update-all.sh's ORDER: add it where its inputs are up to date"
done
for script in "${ORDER[@]}"; do
  log "update: $script"
  bash "$script"
done

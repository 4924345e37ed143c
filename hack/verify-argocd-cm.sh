#!/usr/bin/env bash
# Fail if charts/modelplane/argocd/argocd-cm.yaml is not health.lua as hack/update-argocd-cm.sh writes it.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh
generated="$(mktemp)"; trap 'rm -f "$generated"' EXIT
bash hack/update-argocd-cm.sh "$generated" >/dev/null
diff -u charts/modelplane/argocd/argocd-cm.yaml "$generated" \
  || die "charts/modelplane/argocd/argocd-cm.yaml is stale: run hack/update-argocd-cm.sh"
log "the Argo CD snippet is up to date"

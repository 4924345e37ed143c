#!/usr/bin/env bash
# Write charts/modelplane/argocd/argocd-cm.yaml: the chart's Argo CD health check (health.lua) as the
# argocd-cm key Argo CD reads, ready for `kubectl patch` or the argo-cd chart's `configs.cm`.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh
out="${1:-charts/modelplane/argocd/argocd-cm.yaml}"
"$VENV/bin/python" - "$out" <<'PY'
import sys
from pathlib import Path

import yaml


class Literal(str):
    pass


yaml.add_representer(
    Literal, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
)
script = Path("charts/modelplane/argocd/health.lua").read_text()
patch = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "argocd-cm", "namespace": "argocd"},
    "data": {"resource.customizations.health.modelplane.io_ModelDeployment": Literal(script)},
}
header = (
    "# Generated from health.lua by hack/update-argocd-cm.sh: do not edit.\n"
    "# kubectl patch configmap argocd-cm -n argocd --type merge --patch-file argocd-cm.yaml\n"
)
Path(sys.argv[1]).write_text(header + yaml.dump(patch, sort_keys=False, width=100))
PY
log "wrote $out"

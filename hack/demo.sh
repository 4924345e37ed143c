#!/usr/bin/env bash
# The local demo: set everything up, start the control plane with simulated GPU nodes and show them.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

bash hack/setup.sh
bash hack/build-tools.sh >/dev/null
bash hack/cluster.sh up
eval "$(bash hack/cluster.sh env)"
export PATH="$VENV/bin:$PATH"

log "the simulated GPU fleet:"
kubectl get nodes -L nvidia.com/gpu.product \
  -o custom-columns='NAME:.metadata.name,GPU:.metadata.labels.nvidia\.com/gpu\.product,GPUS:.status.allocatable.nvidia\.com/gpu,STATUS:.status.conditions[-1].type'
log "the cluster keeps running: eval \"\$(hack/cluster.sh env)\" to use it; hack/cluster.sh down to stop it"

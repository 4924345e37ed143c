#!/usr/bin/env bash
# The local Kubernetes control plane with simulated GPU nodes.
#   hack/cluster.sh up [--nodes N]   build the binaries (cached by version) and start everything
#   hack/cluster.sh down             stop exactly the processes `up` started; remove its data
#   hack/cluster.sh status           processes, PIDs and memory (exit 3 when not running)
#   hack/cluster.sh env              print `export KUBECONFIG=...`; use as: eval "$(hack/cluster.sh env)"
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

cmd="${1:-}"
[ -n "$cmd" ] || die "usage: hack/cluster.sh up|down|status|env [--nodes N]"
shift
exec python3 hack/localcluster.py "$cmd" "$@"

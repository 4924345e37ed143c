#!/usr/bin/env bash
# The local Kubernetes cluster with simulated GPU nodes, inside the `modelplane` network namespace
# (only `lo`: see hack/dataplane/isolation.py). Run as root (it creates the namespace).
#   hack/cluster.sh up [--nodes N] [--with dataplane|kubelet,prometheus,metrics,gateway]
#                                    build the binaries (cached by version) and start everything
#   hack/cluster.sh down             stop exactly the processes `up` started; remove its data
#   hack/cluster.sh status           processes, PIDs, memory, data-plane endpoints (exit 3 when down)
#   hack/cluster.sh env              print `export KUBECONFIG=...` (valid inside the namespace)
#   hack/cluster.sh shell            a shell inside the namespace with KUBECONFIG set
#   hack/cluster.sh kubectl ARGS...  one kubectl command inside the namespace
#   hack/cluster.sh run COMMAND...   any command inside the namespace (e.g. a benchmark)
# Already inside an isolated namespace (hack/test.sh, a `shell`), it runs right there.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

cmd="${1:-}"
[ -n "$cmd" ] || die "usage: hack/cluster.sh up|down|status|env|shell|kubectl|run [--nodes N] [--with ...]"
shift
if [ "$cmd" = up ]; then
  case " $* ${MODELPLANE_CLUSTER_WITH:-} " in
    *" --with"*|*dataplane*|*gateway*|*prometheus*|*kubelet*) bash hack/build-tools.sh dataplane >/dev/null ;;
  esac
fi
case "$cmd" in
  shell)
    in_netns "$MODELPLANE_NETNS" env KUBECONFIG="$PWD/.cluster/kubeconfig" PATH="$VENV/bin:$PATH" \
      PS1='(modelplane netns) \w\$ ' bash --norc -i ;;
  kubectl)
    in_netns "$MODELPLANE_NETNS" "$VENV/bin/kubectl" --kubeconfig "$PWD/.cluster/kubeconfig" "$@" ;;
  run)
    in_netns "$MODELPLANE_NETNS" env PATH="$VENV/bin:$PATH" "$@" ;;
  *) in_netns "$MODELPLANE_NETNS" python3 hack/localcluster.py "$cmd" "$@" ;;
esac

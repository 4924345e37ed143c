# shellcheck shell=bash
# Shared settings for hack/ scripts: pinned tool versions and the per-user cache they build into.
# Sourced, never executed. Bump a version here and every script (and the cache key) follows.

KUBE_VERSION="${KUBE_VERSION:-1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
HELM_VERSION="${HELM_VERSION:-4.2.4}"
# The data plane (hack/dataplane): a Gateway API implementation, Prometheus and its metrics adapter.
# Traefik, Prometheus and the adapter are pinned by hack/tools/<name>/go.mod; these name the cache.
TRAEFIK_VERSION="3.6.12"
PROMETHEUS_VERSION="0.316.0"
PROMETHEUS_ADAPTER_VERSION="0.12.0"
GATEWAY_API_VERSION="1.4.1"
GOPHER_LUA_VERSION="1.1.1"
# Add-ons whose CRDs the operator renders children of (fetched, not built): KEDA's ScaledObject, the
# Prometheus Operator's ServiceMonitor and PrometheusRule, from their Go modules' CRD directories.
KEDA_VERSION="2.19.0"
PROMETHEUS_OPERATOR_VERSION="0.85.0"  # the Lua interpreter Argo CD embeds (hack/tools/argocd-lua/go.mod)

MODELPLANE_CACHE="${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}"
GO_VERSION="$(go env GOVERSION 2>/dev/null || echo nogo)"
# Binaries are keyed by their own version and the Go toolchain that built them.
TOOLS_BIN="${MODELPLANE_CACHE}/bin/k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_${GO_VERSION}"
DATAPLANE_BIN="${MODELPLANE_CACHE}/bin/traefik-${TRAEFIK_VERSION}_prometheus-${PROMETHEUS_VERSION}_adapter-${PROMETHEUS_ADAPTER_VERSION}_gateway-api-${GATEWAY_API_VERSION}_${GO_VERSION}"
ADDON_CRDS="${MODELPLANE_CACHE}/crds/keda-${KEDA_VERSION}_prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"
# The Argo CD health-script runner: keyed by its source too, so an edit rebuilds it.
ARGOCD_LUA_BIN="${MODELPLANE_CACHE}/bin/argocd-lua-${GOPHER_LUA_VERSION}-$(sha256sum hack/tools/argocd-lua/main.go 2>/dev/null | cut -c1-12)_${GO_VERSION}"

export GOTOOLCHAIN=local GOFLAGS=-modcacherw CGO_ENABLED=0

log() { printf '\033[1m[%s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

UV_VERSION="0.13.8"
VENV="${VENV:-$PWD/.venv}"

# uv, pinned, in its own cached venv: a fresh machine needs nothing but python3.
ensure_uv() {
  UV="$MODELPLANE_CACHE/uv-$UV_VERSION/bin/uv"
  if [ ! -x "$UV" ]; then
    log "installing uv $UV_VERSION into $MODELPLANE_CACHE/uv-$UV_VERSION"
    python3 -m venv "$MODELPLANE_CACHE/uv-$UV_VERSION"
    "$MODELPLANE_CACHE/uv-$UV_VERSION/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
  export UV UV_PYTHON_DOWNLOADS=never
}

# The network namespace the cluster, its data plane, the tests and the demo run in: only `lo`, with
# 10.244.0.1/16 on it, so pod addresses are local and nothing can leave (hack/dataplane/isolation.py).
MODELPLANE_NETNS="${MODELPLANE_NETNS:-modelplane}"
NETNS_ADDRESS="10.244.0.1/16"

# True when this shell already runs in an isolated namespace (the check asks the kernel).
in_isolated_netns() { PYTHONPATH=hack python3 -m dataplane check 2>/dev/null; }

netns_ensure() {  # netns_ensure NAME: create the namespace if needed; lo up with the address
  local name="$1"
  [ "$(id -u)" = 0 ] || die "creating the network namespace $name needs root (ip netns add)"
  command -v ip >/dev/null || apt-get install -y -q iproute2 >/dev/null || die "install iproute2"
  ip netns list | grep -q "^$name\b" || ip netns add "$name"
  ip netns exec "$name" ip link set lo up
  ip netns exec "$name" ip addr replace "$NETNS_ADDRESS" dev lo
}

in_netns() {  # in_netns NAME COMMAND...: run COMMAND in the namespace (here, if already isolated)
  local name="$1"; shift
  if in_isolated_netns; then "$@"; return; fi
  netns_ensure "$name"
  ip netns exec "$name" "$@"
}

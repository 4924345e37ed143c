#!/usr/bin/env bash
# Every static check CI relies on besides the tests: lint, types, architecture, generated files.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

failed=()
run() { log "verify: $*"; "$@" || failed+=("$*"); }

run "$VENV/bin/ruff" check .
run "$VENV/bin/ruff" format --check .
run "$VENV/bin/mypy"
run "$VENV/bin/lint-imports"
for script in hack/verify-*.sh; do
  [ "$script" = hack/verify-all.sh ] || run bash "$script"
done

if [ ${#failed[@]} -ne 0 ]; then
  printf 'verify failed:\n' >&2; printf '  %s\n' "${failed[@]}" >&2; exit 1
fi
log "verify: all checks passed"

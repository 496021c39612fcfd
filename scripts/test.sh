#!/usr/bin/env bash
# `make test`: everything a change must pass — the lint checks (scripts/lint.sh), the
# unit tier run isolated (scripts/test-unit.sh: no service reachable, non-root), then the
# service tier against the real broker, Redis and PostgreSQL. Starts what it needs; stops
# the broker again if it was not running before. Each stage is timed; a table of the
# stages closes the run (a failed one too).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
RUN_DIR="${RUN_DIR:-$ROOT/run}"
LOG_TAG="test"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

started_broker=0
cleanup() {
  local status=$?
  if ((started_broker)); then scripts/stack.sh broker-down; fi
  stage_summary
  exit "$status"
}
trap cleanup EXIT

for check in fmt clippy machete shellcheck deny; do stage "lint: $check" scripts/lint.sh "$check"; done

services() {
  scripts/stack.sh deps
  scripts/stack.sh prometheus-deps
  scripts/stack.sh schemathesis-deps # the API contract run (e2e/tests/contract.rs)
  scripts/stack.sh broker-up
}
if ! alive "$RUN_DIR/kafka.pid" && ! port_open 9092; then started_broker=1; fi
stage "services: Redis, PostgreSQL, the broker, tools" services

# The end-to-end tests run the service binaries as processes.
stage "build the service binaries" cargo build --bins --quiet

stage "unit tier (isolated: non-root, nothing listening)" scripts/test-unit.sh

# The service tier: every integration test file not marked `// tier: unit`, one cargo
# run per package (test names repeat across crates).
service_tier() {
  local package test failed=0
  declare -A tests=()
  while read -r package test; do tests[$package]+=" --test $test"; done < <(scripts/test-unit.sh --targets service)
  for package in "${!tests[@]}"; do
    # shellcheck disable=SC2086 # the --test flags split on purpose
    if cargo nextest --version >/dev/null 2>&1; then
      cargo nextest run -p "$package" ${tests[$package]} --no-fail-fast || failed=1
    else
      cargo test -p "$package" ${tests[$package]} --no-fail-fast || failed=1
    fi
  done
  ((failed == 0))
}
stage "service tier (real broker, Redis, PostgreSQL)" service_tier

#!/usr/bin/env bash
# `make test`: everything a change must pass, against the real broker, Redis and PostgreSQL.
# Starts what it needs; stops the broker again if it was not running before.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
RUN_DIR="${RUN_DIR:-$ROOT/run}"

scripts/stack.sh deps
scripts/stack.sh prometheus-deps
scripts/stack.sh schemathesis-deps # the API contract run (e2e/tests/contract.rs)
started_broker=0
LOG_TAG=test
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
if ! alive "$RUN_DIR/kafka.pid"; then
  if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then started_broker=1; fi
fi
scripts/stack.sh broker-up
cleanup() { if ((started_broker)); then scripts/stack.sh broker-down; fi; }
trap cleanup EXIT

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# No unused dependencies (false positives, crates used only through macros or features, go in
# [package.metadata.cargo-machete] ignored = [...] of their Cargo.toml, with the reason).
if ! cargo machete --version >/dev/null 2>&1; then cargo install --locked cargo-machete; fi
cargo machete

echo "== build the service binaries (the end-to-end tests run them as processes)"
cargo build --bins --quiet

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # nextest does not run doctests
  cargo test --workspace --doc --quiet
else
  cargo test --workspace --no-fail-fast
fi

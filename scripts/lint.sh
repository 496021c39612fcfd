#!/usr/bin/env bash
# `make lint`, and the first stages of `make test`: static checks, no service needed.
#
#   scripts/lint.sh              every check, in this order, each timed
#   scripts/lint.sh <check>...   only these: fmt clippy machete shellcheck deny
#
#   - fmt:        rustfmt, the committed formatting
#   - clippy:     every target, warnings are errors
#   - machete:    no unused dependency (cargo-machete, installed if missing)
#   - shellcheck: every script in scripts/ (Debian package, installed if missing)
#   - deny:       cargo-deny (pinned, installed if missing) with deny.toml: licenses,
#                 bans (duplicate versions), sources (crates.io only), and advisories
#                 when the RustSec advisory database can be fetched (from github.com):
#                 otherwise that check is skipped, saying why, and does not fail.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
LOG_TAG="lint"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

CARGO_DENY_VERSION=0.20.2
CHECKS=(fmt clippy machete shellcheck deny)

check_fmt() { cargo fmt --all -- --check; }

check_clippy() { cargo clippy --all-targets --quiet -- -D warnings; }

# No unused dependencies (false positives, crates used only through macros or features, go in
# [package.metadata.cargo-machete] ignored = [...] of their Cargo.toml, with the reason).
check_machete() {
  if ! cargo machete --version >/dev/null 2>&1; then cargo install --locked cargo-machete; fi
  cargo machete
}

check_shellcheck() {
  command -v shellcheck >/dev/null || apt_install shellcheck
  # -x: follow `source scripts/lib.sh`.
  shellcheck -x scripts/*.sh
}

check_deny() {
  if [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]]; then
    log "installing cargo-deny $CARGO_DENY_VERSION"
    cargo install --locked --force cargo-deny --version "$CARGO_DENY_VERSION"
  fi
  # --offline reads every package of Cargo.lock, other platforms' too (wasm-bindgen, say), which
  # a build for this one never downloads: fetch them first (crates.io is reachable; idempotent).
  cargo fetch --locked --quiet
  cargo deny --offline check licenses bans sources
  # The advisory database is a git repository on github.com. Fetch it (bounded); if that fails,
  # use a copy fetched earlier if there is one, else say so and skip that one check rather than
  # fail the lint on the network.
  local out dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
  if out="$(timeout 120 cargo deny fetch db 2>&1)"; then
    cargo deny --offline check advisories
  elif compgen -G "$dbs/*/.git" >/dev/null; then
    log "advisories: could not fetch the RustSec database; checking against the copy in $dbs (it may be stale)"
    cargo deny --offline check advisories
  else
    log "advisories: SKIPPED — the RustSec advisory database (https://github.com/RustSec/advisory-db) could not be fetched:"
    printf '%s\n' "$out" | grep -E 'fatal|ERROR' | head -2 | cut -c1-200 | sed 's/^/    /' >&2
    log "advisories: licenses, bans and sources were checked; run \`cargo deny check advisories\` where github.com is reachable"
  fi
}

checks=("$@")
((${#checks[@]})) || checks=("${CHECKS[@]}")
for c in "${checks[@]}"; do
  [[ " ${CHECKS[*]} " == *" $c "* ]] || die "unknown check '$c' (one of: ${CHECKS[*]})"
done
if ((${#checks[@]} == 1)); then
  "check_${checks[0]}"
else
  trap stage_summary EXIT
  for c in "${checks[@]}"; do stage "lint: $c" "check_$c"; done
fi

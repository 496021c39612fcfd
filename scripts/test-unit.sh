#!/usr/bin/env bash
# `make test-unit`: every test that needs no service, run isolated — as a non-root
# user, in a network namespace of its own where nothing listens (no PostgreSQL,
# Redis or Kafka, even while the local stack runs on this machine).
#
# The tiers (the convention travels with a test file when it moves between crates):
#   unit     tests in src/ (lib, bin and example unit tests), doctests, and each
#            integration test file under tests/ whose first line is `// tier: unit`
#   service  every other file under tests/: it may use the real broker, Redis and
#            PostgreSQL (`make test` runs both tiers)
# A unit-tier test that touches a service fails here (connection refused): it
# never skips. Each test binary (and doctest) runs through scripts/isolate.sh,
# cargo's target runner for this run.
#
#   scripts/test-unit.sh                      build the binaries, run the unit tier
#   scripts/test-unit.sh --targets unit|service
#                                             print a tier's integration test targets, `<package> <test>` a line
#   scripts/test-unit.sh --audit              run the service tier isolated too and list the tests that
#                                             passed there: they need no service (candidates for the unit
#                                             tier; a file where all pass gets the marker). Minutes: the
#                                             tests that need a service fail, some only after their timeouts.
#
# Environment: UNIT_USER (default analytics-test: created as a system user when
# run as root) runs the tests; CARGO_TEST_ARGS is appended to each `cargo test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
LOG_TAG="test-unit"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

MARKER='// tier: unit'

# `<package> <test> <file>` of every integration test target of the workspace.
test_targets() {
  command -v jq >/dev/null || apt_install jq
  cargo metadata --no-deps --format-version 1 \
    | jq -r '.packages[] | .name as $p | .targets[] | select(.kind == ["test"]) | "\($p) \(.name) \(.src_path)"'
}

# The integration test targets of tier $1 (unit: the file's first line is the marker).
targets() {
  local package test file tier
  test_targets | while read -r package test file; do
    tier=service
    if [[ "$(head -n 1 "$file")" == "$MARKER" ]]; then tier=unit; fi
    if [[ $tier == "$1" ]]; then echo "$package $test"; fi
  done
}

# How the tests are isolated, for scripts/isolate.sh: `root` (unshare + setpriv
# to UNIT_USER), `userns` (not root: a user and network namespace of our own).
isolation() {
  if ((EUID == 0)); then
    if ! command -v unshare >/dev/null || ! command -v setpriv >/dev/null; then apt_install util-linux; fi
    command -v ip >/dev/null || apt_install iproute2
    unshare --net true || die "cannot create a network namespace (unshare --net) as root"
    id -u "$UNIT_USER" >/dev/null 2>&1 \
      || useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$UNIT_USER"
    mkdir -p "$ROOT/target" # a fresh checkout has none before its first build
    if setpriv --reuid="$UNIT_USER" --regid="$UNIT_USER" --init-groups test -r "$ROOT/Cargo.toml" -a -x "$ROOT/target"; then
      echo root
    else
      # A checkout under a directory only root may enter (e.g. /root): still isolated from every
      # service, but as root. Set UNIT_USER to a user who can read it to drop root too.
      log "warning: $UNIT_USER cannot read $ROOT (directory permissions): the tests run as root, in the namespace where nothing listens" >&2
      echo rootnet
    fi
  elif unshare --net --map-root-user sh -c "ip link set lo up && unshare --map-user=$(id -u) --map-group=$(id -g) true" \
    2>/dev/null; then
    echo userns
  else
    die "cannot isolate the tests: no network namespace for $(id -un) (user namespaces disabled?); run as root"
  fi
}

# The isolation of scripts/isolate.sh, as cargo's target runner for this shell.
isolate_tests() {
  UNIT_USER="${UNIT_USER:-analytics-test}"
  UNIT_ISOLATION="$(isolation)"
  UNIT_TMP="$(mktemp -d "${TMPDIR:-/tmp}/analytics-unit.XXXXXX")"
  trap 'rm -rf "$UNIT_TMP"' EXIT
  if [[ $UNIT_ISOLATION == root ]]; then chown "$UNIT_USER:" "$UNIT_TMP"; fi
  export UNIT_USER UNIT_ISOLATION UNIT_TMP
  local host
  host="$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')"
  export "CARGO_TARGET_${host}_RUNNER=$ROOT/scripts/isolate.sh"
  local user
  user="$(id -un)"
  if [[ $UNIT_ISOLATION == root ]]; then user=$UNIT_USER; fi
  log "tests run as $user, in a network namespace where nothing listens"
}

audit() {
  isolate_tests
  local package test out passed
  while read -r package test; do
    out="$(cargo test -p "$package" --test "$test" --no-fail-fast -- --test-threads 2 </dev/null 2>&1 || true)"
    passed="$(sed -n 's/^test \(.*\) \.\.\. ok$/\1/p' <<<"$out")"
    if [[ -n $passed ]]; then
      if grep -qE '^test .* \.\.\. FAILED$' <<<"$out"; then
        printf '%s/%s: some tests need no service:\n' "$package" "$test"
        printf '    %s\n' "${passed//$'\n'/$'\n'    }"
      else
        printf '%s/%s: every test passed isolated: mark the file "%s"?\n' "$package" "$test" "$MARKER"
      fi
    fi
  done < <(targets service)
}

run_unit_tier() {
  isolate_tests

  # The docs tests compare the binaries' --help with docs/configuration.md.
  cargo build --bins --quiet

  local failed=0 extra=()
  read -ra extra <<<"${CARGO_TEST_ARGS:-}"
  cargo test --workspace --lib --bins --examples --no-fail-fast --quiet "${extra[@]}" || failed=1
  cargo test --workspace --doc --no-fail-fast --quiet "${extra[@]}" || failed=1
  # The integration test files marked unit, one cargo run per package (test names repeat across crates).
  local package test
  declare -A tests=()
  while read -r package test; do tests[$package]+=" --test $test"; done < <(targets unit)
  for package in "${!tests[@]}"; do
    # shellcheck disable=SC2086 # the --test flags split on purpose
    cargo test -p "$package" ${tests[$package]} --no-fail-fast --quiet "${extra[@]}" || failed=1
  done
  ((failed == 0)) || die "unit tier failed (a test that needs a service belongs in a service-tier file under tests/)"
  log "unit tier passed"
}

case "${1:-}" in
  "") run_unit_tier ;;
  --audit) audit ;;
  --targets) [[ ${2:-} == unit || ${2:-} == service ]] || die "usage: $0 --targets unit|service"; targets "$2" ;;
  *) die "usage: $0 [--targets unit|service | --audit]" ;;
esac

#!/usr/bin/env bash
# `make chaos`: fault scenarios against the real stack (release binaries, the
# local broker, Redis, PostgreSQL). The scenarios are the rows of the table in
# e2e/tests/chaos.rs, one `#[ignore]`d test each; this lists them from the test
# binary and runs them one by one: one line per scenario, then a summary.
#
#   scripts/chaos.sh              every scenario
#   scripts/chaos.sh NAME...      only the scenarios whose name contains one of NAME
#                                 (e.g. `scripts/chaos.sh chaos_1_ chaos_2_`)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
export PATH="$HOME/.cargo/bin:$PATH"

scripts/stack.sh deps
scripts/stack.sh broker-up
# The cluster rows (chaos_17.. chaos_19) start a three-node Kafka cluster of their own on
# CLUSTER_BROKER_PORT (19092..19097) in CLUSTER_RUN_DIR (run/cluster) and stop it after their
# checks; a row that failed half-way may leave it running: stop it here whatever happened.
CLUSTER_RUN_DIR="${CLUSTER_RUN_DIR:-$ROOT/run/cluster}"
export CLUSTER_RUN_DIR
stop_cluster() { if [[ -d $CLUSTER_RUN_DIR ]]; then RUN_DIR="$CLUSTER_RUN_DIR" scripts/kafka.sh down; fi; }
trap stop_cluster EXIT
cargo build --release --bins --quiet
chaos() { cargo test --release -p e2e --test chaos --quiet -- --ignored "$@"; }

# The rows, in their table's order (chaos_<n>_...): `<name>: test` lines of --list.
mapfile -t scenarios < <(chaos --list 2>/dev/null | sed -n 's/: test$//p' | sort -t_ -k2,2n)
((${#scenarios[@]})) || { echo "no scenario found: does e2e/tests/chaos.rs build?" >&2; exit 1; }
if (($#)); then
  selected=()
  for name in "${scenarios[@]}"; do
    for want in "$@"; do [[ $name == *"$want"* ]] && { selected+=("$name"); break; }; done
  done
  scenarios=("${selected[@]}")
fi

passed=0 failed=0
mkdir -p target/chaos
for name in "${scenarios[@]}"; do
  log="target/chaos/$name.log"
  # A new file, never written through: target/ may be hard-linked with another checkout's.
  rm -f "$log"
  start=$SECONDS
  if chaos --exact "$name" --test-threads 1 --nocapture >"$log" 2>&1; then status=PASS; else status=FAIL; fi
  # The row's own words (`scenario: ...`, its first line), or its name if it never got that far.
  what="$(sed -n 's/^scenario: //p' "$log" | head -n 1)"
  what=${what:-$name}
  if [[ $status == PASS ]]; then
    printf 'PASS  %-70s %4ss\n' "$what" $((SECONDS - start)); passed=$((passed + 1))
    # What a scenario measured (the staleness after a restart, say), under its line.
    grep -E '^(staleness|measured)' "$log" | sed 's/^/        /' || true
    # A passed row's log is gone with its services' (E2E_KEEP_LOGS=1 keeps both).
    [[ -n ${E2E_KEEP_LOGS:-} ]] || rm -f "$log"
  else
    printf 'FAIL  %-70s %4ss  (%s)\n' "$what" $((SECONDS - start)) "$log"; failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"

# Beside row 20 (the services' failover pause): the same kill -9 measured on the broker's own group protocol,
# classic (session timeout at the broker's minimum) and KIP-848's (the broker's defaults). Run with every row,
# or when asked for by name (`scripts/chaos.sh group_failover`).
run_group=$(( $# == 0 ))
for want in "$@"; do [[ group_failover == *"$want"* ]] && run_group=1; done
if ((run_group)); then
  for args in "--protocol classic --kills 10" "--protocol consumer --kills 3"; do
    # shellcheck disable=SC2086 # the arguments are split on purpose
    if json="$(target/release/group-failover $args 2>target/chaos/group_failover.log | tail -1)"; then
      printf 'MEASURED  the broker group protocol (%s): %s\n' "$args" "$json"
      [[ -n ${E2E_KEEP_LOGS:-} ]] || rm -f target/chaos/group_failover.log
    else
      printf 'FAIL  group failover measurement (%s), see target/chaos/group_failover.log\n' "$args"; failed=$((failed + 1))
    fi
  done
fi
((failed == 0))

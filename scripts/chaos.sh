#!/usr/bin/env bash
# `make chaos`: fault scenarios against the real stack (release binaries, the
# local broker, Redis, PostgreSQL). One line per scenario, then a summary.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

scripts/stack.sh deps
scripts/stack.sh broker-up
cargo build --release --bins --quiet
cargo test --release -p e2e --test chaos --no-run --quiet 2>/dev/null

scenarios=(
  "chaos_1_kill_9_processor_mid_stream|kill -9 the processor mid-stream, restart it"
  "chaos_2_kill_9_materializer_mid_stream|kill -9 the materializer mid-stream, restart it"
  "chaos_3_kill_9_one_of_two_command_instances|kill -9 one of two command instances behind the load"
  "chaos_4_broker_stopped_and_restarted|stop and restart the broker"
  "chaos_5_redis_flushed_under_load|Redis flushed under load"
  "chaos_6_postgres_stopped_for_30_s|PostgreSQL unreachable for 30 s"
  "chaos_7_instances_added_and_removed_under_load|processor and materializer added, then removed, under load"
  "chaos_8_redis_down_for_30_s_under_load|Redis unreachable for 30 s under load"
  "chaos_9_duplicate_ids_with_kill_9_of_the_processor|every event sent twice with its id, processor kill -9"
  "chaos_10_increments_kill_9_of_processor_and_materializer|increments: kill -9 of processor and materializer"
  "chaos_11_increments_instances_added_and_removed|increments: instances added and removed under load"
  "chaos_12_increments_kill_9_of_the_processor_holding_1m_keys|increments: kill -9 of the processor holding 1M keys, staleness after"
  "chaos_13_increments_staleness_after_a_materializer_restart_with_1m_keys|increments: 1M keys held, materializer kill -9, staleness p99"
)
passed=0 failed=0
mkdir -p target/chaos
for entry in "${scenarios[@]}"; do
  name=${entry%%|*} what=${entry#*|}
  start=$SECONDS
  if cargo test --release -p e2e --test chaos --quiet -- --ignored --exact "$name" --test-threads 1 --nocapture \
      >"target/chaos/$name.log" 2>&1; then
    printf 'PASS  %-70s %4ss\n' "$what" $((SECONDS - start)); passed=$((passed + 1))
    # What a scenario measured (the staleness after a restart, say), under its line.
    grep -E '^(staleness|measured)' "target/chaos/$name.log" | sed 's/^/        /' || true
  else
    printf 'FAIL  %-70s %4ss  (target/chaos/%s.log)\n' "$what" $((SECONDS - start)) "$name"; failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"
((failed == 0))

#!/usr/bin/env bash
# `make bench` (about 10 minutes) / `make bench QUICK=1` (under 3 minutes).
# Drives the real stack with wrk, measures same-run ceilings, writes
# target/bench/results.json and regenerates docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
RUN_DIR="${RUN_DIR:-$ROOT/run}"
QUICK="${QUICK:-}"
OUT="$ROOT/target/bench"
mkdir -p "$OUT"
rm -f "$OUT"/*.json

if [[ $QUICK == 1 ]]; then DUR=8s; PROBE=8; PRODUCE=100000; BACKLOG=8s; else DUR=30s; PROBE=30; PRODUCE=500000; BACKLOG=20s; fi
log() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }

for tool in wrk redis-benchmark; do
  if ! command -v "$tool" >/dev/null; then
    log "installing wrk and redis-tools"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-tools >/dev/null
  fi
done

started_stack=0
if ! [[ -f "$RUN_DIR/command.pid" ]] || ! kill -0 "$(cat "$RUN_DIR/command.pid")" 2>/dev/null; then started_stack=1; fi
scripts/stack.sh up >/dev/null
ceiling_pid=""
cleanup() {
  [[ -n $ceiling_pid ]] && kill "$ceiling_pid" 2>/dev/null || true
  if ((started_stack)); then scripts/stack.sh down >/dev/null; fi
}
trap cleanup EXIT

log "building the benchmark tools"
cargo build --release -p bench --bins --quiet

# One JSON object per measurement in $OUT, merged at the end.
record() { echo "$2" >"$OUT/$1.json"; }
wrk_run() { # wrk_run <name> <connections> <script> <url>
  log "wrk $1: $2 connections, $DUR, $3"
  record "$1" "$(wrk -t2 -c"$2" -d"$DUR" --timeout 10s -s "bench/wrk/$3" "$4" | tail -1)"
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$(cat "$RUN_DIR/$1.pid")/status"; }
rss_all() { # rss_all <name>
  local json="{"
  for s in command processor materializer query; do json+="\"rss_kb_${s}_$1\": $(rss_kb "$s"),"; done
  record "rss_$1" "${json%,}}"
}
metric() { curl -fs "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

log "aggregation core (criterion)"
QUICK=$QUICK cargo bench -p bench --bench core --quiet -- --noplot >"$OUT/criterion.txt" 2>&1
cp "$OUT/core_state.json" "$OUT/core_state.json.tmp" 2>/dev/null && mv "$OUT/core_state.json.tmp" "$OUT/core_state.json"

log "broker raw produce rate"
record broker "$(target/release/broker-produce "$PRODUCE" | tail -1)"

rss_all rest

log "ceilings: bare hyper"
target/release/ceiling --listen 127.0.0.1:18090 --mode post & ceiling_pid=$!
sleep 0.5
wrk_run ceiling_post_64 64 post.lua http://127.0.0.1:18090
wrk_run ceiling_post_256 256 post.lua http://127.0.0.1:18090
kill "$ceiling_pid"; wait "$ceiling_pid" 2>/dev/null || true
target/release/ceiling --listen 127.0.0.1:18091 --mode get & ceiling_pid=$!
sleep 0.5
wrk_run ceiling_get_64 64 get.lua http://127.0.0.1:18091
kill "$ceiling_pid"; wait "$ceiling_pid" 2>/dev/null || true
ceiling_pid=""
log "ceiling: redis-benchmark GET"
record redis "{\"redis_benchmark_get_rps\": $(redis-benchmark -h 127.0.0.1 -t get -n 200000 -c 50 --csv | awk -F'"' '/^"GET"/ {print $4}')}"

wrk_run post_64 64 post.lua http://127.0.0.1:8081
# The freshness probe runs while the 256-connection load does.
target/release/freshness-probe "$PROBE" >"$OUT/freshness.json" &
probe_pid=$!
( sleep 4; rss_all load ) &
wrk_run post_256 256 post.lua http://127.0.0.1:8081
wait "$probe_pid"
wait

wrk_run get_current 64 get.lua http://127.0.0.1:8082
redis-cli -h 127.0.0.1 --scan --pattern "analytics:hour:*" | xargs -r redis-cli -h 127.0.0.1 del >/dev/null
wrk_run get_old 64 get-old.lua http://127.0.0.1:8082

log "whole processor: backlog built while it is stopped, then drained"
kill -TERM "$(cat "$RUN_DIR/processor.pid")"
while kill -0 "$(cat "$RUN_DIR/processor.pid")" 2>/dev/null; do sleep 0.2; done
before=$(metric 8081 analytics_command_events_accepted_total)
wrk -t2 -c64 -d"$BACKLOG" -s bench/wrk/post.lua http://127.0.0.1:8081 >/dev/null
backlog=$(( $(metric 8081 analytics_command_events_accepted_total) - before ))
scripts/stack.sh up >/dev/null
t0=$(date +%s.%N)
until [[ $(metric 9101 analytics_processor_events_applied_total || echo 0) -ge $backlog ]]; do sleep 0.05; done
t1=$(date +%s.%N)
record processor "{\"processor_backlog_events\": $backlog, \"processor_drain_seconds\": $(python3 -c "print($t1 - $t0)")}"
sleep 6 # let the state gauges refresh
record state_live "{\"live_state_bytes\": $(metric 9101 analytics_processor_state_bytes), \"live_state_user_hours\": $(metric 9101 analytics_processor_state_user_hours)}"

python3 scripts/bench_report.py "$OUT" "$(nproc)" "${QUICK:-0}" "$DUR"
log "results: target/bench/results.json, report: docs/benchmarks.md"

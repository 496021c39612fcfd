#!/usr/bin/env bash
# Freshness by stage on an isolated stack (bench/src/bin/isolated-stack.rs: its own ports, topics, schema and Redis
# prefix on the shared broker, PostgreSQL and Redis), for when the fixed ports of `make bench` are taken: the same
# phases as make bench's freshness ones (wrk at 256 connections with the freshness probe, then half that rate paced
# with the probe, each with the services' `_input_age_seconds` scraped around the probe), then (PERF=1) a backlog
# drained by the processor under `perf record`. Writes target/bench/{freshness,freshness_half_load,stages,
# stages_half_load,post_256,post_half_load,stages_cadence[_half_load],stages_run}.json (and drain-profile.txt: the
# cadence files hold the analytics checkpoints per second and the processor's CPU share during each load); `python3
# scripts/bench_report.py target/bench …` renders them with the other sections' figures of the last run.
#   scripts/bench-stages.sh [seconds per phase, default 8] [backlog events, default 200000]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DUR="${1:-8}"
BACKLOG="${2:-200000}"
OUT="$ROOT/target/bench"
mkdir -p "$OUT"
log() { printf '\033[1m[bench-stages]\033[0m %s\n' "$*" >&2; }
record() { local json="$2"; [[ -n $json ]] || json='{}'; echo "$json" >"$OUT/$1.json"; }
cargo build --release --bins --quiet

# The stack runs as a coprocess: its first line says where it is; it takes commands on its stdin.
coproc STACK { exec target/release/isolated-stack; }
# shellcheck disable=SC2153 # STACK_PID is set by coproc
stack_pid=$STACK_PID
exec {to_stack}>&"${STACK[1]}"
read -r info <&"${STACK[0]}"
field() { python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(eval("d" + sys.argv[2]))' "$info" "$1"; }
command_addr="$(field '["command"]')" query_addr="$(field '["query"]')"
processor_addr="$(field '["processor"]')" materializer_addr="$(field '["materializer"]')"
KAFKA_BROKERS="$(field '["env"]["KAFKA_BROKERS"]')" EVENTS_TOPIC="$(field '["env"]["EVENTS_TOPIC"]')"
export KAFKA_BROKERS EVENTS_TOPIC
# Ctrl-C stops it: it stops the services and removes its topics, schema and keys (its stdin stays open in this shell).
stop_stack() { kill -INT "$stack_pid" 2>/dev/null || true; wait "$stack_pid" 2>/dev/null || true; }
trap stop_stack EXIT
log "isolated stack: command $command_addr, query $query_addr, topic $EVENTS_TOPIC"

scrape_ages() { # scrape_ages <file>
  { curl -fs "http://$processor_addr/metrics" || true; curl -fs "http://$materializer_addr/metrics" || true; } \
    | grep '_input_age_seconds_bucket' >"$1" || true
}
stages() { # stages <name> <key suffix>
  record "stages$2" "$(python3 scripts/bench_stages.py "$OUT/ages_$1_before.prom" "$OUT/ages_$1_after.prom" analytics "$2")"
  rm -f "$OUT/ages_$1_before.prom" "$OUT/ages_$1_after.prom"
}
probe() { target/release/freshness-probe "$DUR" --command "$command_addr" --query "$query_addr"; }
processor_pid="$(field '["processor_pid"]')"
# cadence: "<analytics checkpoints> <processor CPU seconds> <epoch seconds>", around each phase: checkpoints/s and
# the processor's CPU share, what a checkpoint cadence costs (its PostgreSQL and Kafka transactions).
cadence() {
  local cps cpu
  cps="$(curl -fs "http://$processor_addr/metrics" | awk '$1 == "analytics_processor_checkpoints_total{workload=\"analytics\"}" {print $2}')"
  cpu="$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$processor_pid/stat" 2>/dev/null || echo 0)"
  printf '%s %s %s\n' "${cps:-0}" "$cpu" "$(date +%s.%N)"
}
cadence_json() { # cadence_json <key suffix> <before> <after>
  python3 - "$@" <<'EOF_CADENCE'
import json, sys
suffix, (c0, u0, t0), (c1, u1, t1) = sys.argv[1], *([float(x) for x in a.split()] for a in sys.argv[2:4])
print(json.dumps({f"stages_checkpoints_per_s{suffix}": (c1 - c0) / (t1 - t0),
                  f"stages_processor_cpu{suffix}": (u1 - u0) / (t1 - t0)}))
EOF_CADENCE
}
processor_lag() { curl -fs "http://$processor_addr/metrics" | awk '$1 ~ /^analytics_processor_consumer_lag_messages/ {s += $2} END {printf "%d\n", s}'; }
wait_caught_up() {
  sleep 5.5
  local deadline=$((SECONDS + 120))
  until [[ $(processor_lag) == 0 ]] || ((SECONDS > deadline)); do sleep 0.5; done
}

# probe_phase <name> <stages key suffix> <freshness file> <load name> <load command...>: the load runs with the
# freshness probe beside it and the services' input ages scraped before the probe and at its end.
probe_phase() {
  local name=$1 suffix=$2 freshness=$3 load=$4
  shift 4
  scrape_ages "$OUT/ages_${name}_before.prom"
  probe >"$OUT/$freshness.json" &
  local probe_pid=$! before
  before="$(cadence)"
  ( sleep "$DUR"; scrape_ages "$OUT/ages_${name}_after.prom" ) &
  local scrape_pid=$!
  record "$load" "$("$@" | tail -1)"
  record "stages_cadence$suffix" "$(cadence_json "$suffix" "$before" "$(cadence)")"
  wait "$probe_pid" "$scrape_pid"
  stages "$name" "$suffix"
}

log "wrk 256 connections, ${DUR}s, with the freshness probe"
probe_phase saturating "" freshness post_256 \
  wrk -t2 -c256 -d"${DUR}s" --timeout 10s -s bench/wrk/post.lua "http://$command_addr"

half=$(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["rps"] / 2))' "$OUT/post_256.json")
wait_caught_up
log "POST paced at $half/s (half the 256-connection maximum), ${DUR}s, with the freshness probe"
probe_phase half_load _half_load freshness_half_load post_half_load \
  target/release/paced-post --rate "$half" --connections 256 --duration "${DUR}s" --target "$command_addr"
record stages_run "{\"stages_isolated_at\": $(date +%s)}"

if [[ -n ${PERF:-} ]]; then
  wait_caught_up
  log "processor drain of $BACKLOG events under perf record"
  echo stop-processor >&"$to_stack"
  target/release/backlog "$BACKLOG" >"$OUT/stages_backlog.json"
  t0=$(date +%s.%N)
  echo start-processor >&"$to_stack"
  read -r started <&"${STACK[0]}"
  pid=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["processor_pid"])' "$started")
  processor_addr=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["processor"])' "$started")
  perf record -F 999 -o "$OUT/drain.perf.data" -p "$pid" >/dev/null 2>&1 &
  perf_pid=$!
  applied() { curl -fs "http://$processor_addr/metrics" | awk '$1 ~ /^analytics_processor_events_applied_total/ {s += $2} END {printf "%d\n", s}'; }
  deadline=$((SECONDS + 300))
  until [[ $(applied) -ge $BACKLOG ]] || ((SECONDS > deadline)); do sleep 0.05; done
  t1=$(date +%s.%N)
  # CPU seconds the processor used (user + system, clock ticks in /proc/<pid>/stat), start included.
  cpu_s=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$pid/stat")
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" || true
  log "drained $BACKLOG events in $(python3 -c "print(round($t1 - $t0, 2))") s (from the processor's start, under perf), $cpu_s CPU seconds"
  { perf report -i "$OUT/drain.perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -v '^# [^S]' | grep .
    perf report -i "$OUT/drain.perf.data" --no-children --sort comm,dso,symbol --stdio --percent-limit 0.3 2>/dev/null \
      | grep -v '^#' | grep .; } >"$OUT/drain-profile.txt" || true
  rm -f "$OUT/drain.perf.data" "$OUT/drain.perf.data.old"
  record stages_drain "{\"stages_drain_events\": $BACKLOG, \"stages_drain_seconds_under_perf\": $(python3 -c "print($t1 - $t0)"), \"stages_drain_cpu_seconds\": $cpu_s}"
fi
log "done: target/bench/{freshness,freshness_half_load,stages,stages_half_load}.json"

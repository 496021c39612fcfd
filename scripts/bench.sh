#!/usr/bin/env bash
# `make bench` (about 20 minutes, plus about 30 for the 10M-widget section) / `make bench QUICK=1` (under 7 minutes on a quiet machine, plus about 8 for 1M widgets).
# Drives the real stack with wrk and the bench tools (bench/src/bin), measures
# same-run ceilings, writes target/bench/results.json and regenerates docs/benchmarks.md.
# `make bench-promotions` (BENCH_ONLY=promotions) runs only the promotions section, on its own isolated stack
# beside whatever runs (the shared broker, Redis and PostgreSQL are used, never started or stopped), and
# regenerates the report with the other sections' figures of the last full run (target/bench/*.json kept).
# `make bench-widgets` (BENCH_ONLY=widgets) runs only the widgets section, the same way.
# `PERF=1 make bench`: the backlog drain also runs under `perf record` (target/bench/drain-profile.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
RUN_DIR="${RUN_DIR:-$ROOT/run}"
QUICK="${QUICK:-}"
OUT="$ROOT/target/bench"
BENCH_ONLY="${BENCH_ONLY:-}"
mkdir -p "$OUT"

# BACKLOG: events written to the events topic while the processor is stopped, then drained.
# LIVE: live-probe's open SSE streams (1,000 in both: opening them takes about a second), POST rounds timed
# through them, and token round trips.
# PROMOTION_ROWS: the generated promotions file (PROMOTION_ROWS=… overrides it, e.g. 1000000 while iterating).
# WIDGETS: the widgets the widgets section loads (WIDGETS=… overrides it).
if [[ $QUICK == 1 ]]; then
  DUR=8s; PROBE=8; PRODUCE=100000; BACKLOG=200000; LIVE=(--streams 1000 --rounds 10 --token-tries 100)
  PROMOTION_ROWS="${PROMOTION_ROWS:-1000000}"
  WIDGETS="${WIDGETS:-1000000}"
else
  DUR=30s; PROBE=30; PRODUCE=500000; BACKLOG=1000000; LIVE=(--streams 1000 --rounds 30 --token-tries 300)
  PROMOTION_ROWS="${PROMOTION_ROWS:-10000000}"
  WIDGETS="${WIDGETS:-10000000}"
fi
PROCESSOR_PORT="${PROCESSOR_PORT:-9101}"
MATERIALIZER_PORT="${MATERIALIZER_PORT:-9102}"
log() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }

for tool in wrk redis-benchmark; do
  if ! command -v "$tool" >/dev/null; then
    log "installing wrk and redis-tools"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-tools >/dev/null
  fi
done

# The promotions section (issue 21): a generated file of PROMOTION_ROWS rows loaded end to end, every service's peak
# RSS, GET /promotions/{id} at 64 connections (90 % present ids) beside the same run's GET ceiling, at rest and
# during a second load. bench/src/bin/promotions.rs runs it on a stack of its own (its own topics, schema and Redis
# prefix, removed at the end, with the generated file).
promotions_section() {
  log "promotions: $PROMOTION_ROWS rows end to end, then GET /promotions/{id} at 64 connections, $DUR each"
  section promotions target/release/promotions --rows "$PROMOTION_ROWS" --duration "$DUR"
}
# Runs a section's tool; its last line (JSON) becomes $OUT/<name>.json. A tool that fails (or prints no JSON) leaves
# $OUT/<name>.json as it was (a full run removed it first: the report says the section was not measured; a run of the
# section alone keeps the last result, which the report dates), keeps its output in $OUT/<name>.log, and fails the
# run once the report is written.
failed_sections=()
section() {
  local name=$1 json
  shift
  # stderr to the terminal and the log; stdout's last line to $json (the tee ends before it is read).
  if json="$({ "$@" 2>&1 1>&3 | tee "$OUT/$name.log" >&2; } 3>&1 | tail -1)" && [[ $json == "{"* ]]; then
    echo "$json" >"$OUT/$name.json"
    rm -f "$OUT/$name.log"
  else
    log "error: the $name section failed (its output: $OUT/$name.log)"
    failed_sections+=("$name")
  fi
}
# Fails the run if a section failed (after the report, which keeps their last results).
sections_passed() {
  ((${#failed_sections[@]} == 0)) || { log "failed sections: ${failed_sections[*]}"; return 1; }
}
# The widgets section (issue 22): WIDGETS widgets loaded (through POST /widgets for 20 s, the rest appended to the
# commands topic as the command appends them when the API would take over 8 minutes; both rates reported), every
# service's RSS at that size, a mixed load (50 % GET /widgets/{serial}, 50 % decided writes) at 64 connections beside
# the same run's ceilings, then kill -9 of each service and the time until it answers again. bench/src/bin/widgets.rs
# runs it on a stack of its own (its own topics, schema and Redis prefix, removed at the end).
widgets_section() {
  log "widgets: $WIDGETS widgets loaded, a mixed load at 64 connections for $DUR, then kill -9 of each service"
  section widgets target/release/widgets --widgets "$WIDGETS" --duration "$DUR"
}
if [[ $BENCH_ONLY == promotions || $BENCH_ONLY == widgets ]]; then
  command -v wrk >/dev/null || { log "installing wrk"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
  log "building the service binaries and the benchmark tools"
  cargo build --release --bins --quiet
  # The section's stack is its own, but its broker, PostgreSQL and Redis are the shared ones: started here if they
  # are not running (as `make test` does), the broker stopped again at the end if this run started it.
  scripts/stack.sh deps
  if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then trap 'scripts/stack.sh broker-down' EXIT; fi
  scripts/stack.sh broker-up
  "${BENCH_ONLY}_section"
  python3 scripts/bench_report.py "$OUT" "$(nproc)" "${QUICK:-0}" "$DUR" "$BENCH_ONLY"
  log "results: target/bench/results.json (${BENCH_ONLY}_*), report: docs/benchmarks.md (its $BENCH_ONLY blocks)"
  sections_passed
  exit 0
fi
[[ -z $BENCH_ONLY ]] || { log "BENCH_ONLY=$BENCH_ONLY: only 'promotions' or 'widgets' runs alone"; exit 2; }
rm -f "$OUT"/*.json

LOG_TAG=bench
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh" # pid_alive: a zombie or a process that is gone is stopped
alive() { [[ -f "$RUN_DIR/$1.pid" ]] && pid_alive "$(cat "$RUN_DIR/$1.pid")"; }
# At the end, stop only what this run started: everything if it started the broker, else the services it started.
started_broker=0 started_services=()
alive kafka || started_broker=1
for s in command processor materializer query; do alive "$s" || started_services+=("$s"); done
scripts/stack.sh up >/dev/null
stop_service() { # stop_service <name>: by its PID file, as scripts/stack.sh does
  alive "$1" || return 0
  local pid; pid="$(cat "$RUN_DIR/$1.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do pid_alive "$pid" || break; sleep 0.2; done
  pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null
  rm -f "$RUN_DIR/$1.pid"
}
ceiling_pid=""
cleanup() {
  if [[ -n $ceiling_pid ]]; then kill "$ceiling_pid" 2>/dev/null || true; fi
  if ((started_broker)); then
    scripts/stack.sh down >/dev/null
  else
    for s in "${started_services[@]}"; do stop_service "$s"; done
  fi
}
trap cleanup EXIT

log "building the benchmark tools"
cargo build --release -p bench --bins --quiet

# One JSON object per measurement in $OUT, merged at the end; {} when the tool printed nothing (it failed).
record() { local json="$2"; [[ -n $json ]] || json='{}'; echo "$json" >"$OUT/$1.json"; }
wrk_run() { # wrk_run <name> <connections> <script> <url> [script arguments...]
  local target=("$4")
  if (($# > 4)); then target+=(-- "${@:5}"); fi
  log "wrk $1: $2 connections, $DUR, $3"
  record "$1" "$(wrk -t2 -c"$2" -d"$DUR" --timeout 10s -s "bench/wrk/$3" "${target[@]}" | tail -1)"
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$(cat "$RUN_DIR/$1.pid")/status"; }
rss_all() { # rss_all <name>
  local json="{"
  for s in command processor materializer query; do json+="\"rss_kb_${s}_$1\": $(rss_kb "$s"),"; done
  record "rss_$1" "${json%,}}"
}
metric() { curl -fs "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
# The sum of a metric over its labels; empty while the metric is not there.
metric_sum() { curl -fs "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2; n++} END {if (n) printf "%d\n", s}'; }
# Waits until a consumer has applied everything in its topics (its lag gauges refresh every 5 s).
wait_caught_up() { # wait_caught_up <name> <ops port> <lag metric>
  sleep 5.5
  local deadline=$((SECONDS + 120))
  until [[ $(metric_sum "$2" "$3") == 0 ]]; do
    ((SECONDS < deadline)) || { log "warning: the $1 still lags after 120s"; return; }
    sleep 0.5
  done
}
wait_processor_caught_up() { wait_caught_up processor "$PROCESSOR_PORT" analytics_processor_consumer_lag_messages; }
wait_materializer_caught_up() { wait_caught_up materializer "$MATERIALIZER_PORT" analytics_materializer_consumer_lag_messages; }

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
# What POST could reach if the command added nothing: the command's producer, N sends in flight, each awaited.
for n in 64 256; do
  log "ceiling: closed-loop produce, $n sends in flight, $DUR"
  record "closed_loop_$n" "$(target/release/closed-loop --in-flight "$n" --duration "$DUR" | tail -1)"
done

wrk_run post_64 64 post.lua http://127.0.0.1:8081
# Freshness by stage: the processor's and the materializer's `_input_age_seconds` histograms (the age of the
# newest input at each stage, on the broker's log-append clock) scraped when a freshness probe starts and when
# it ends; scripts/bench_stages.py turns the difference into p50/p99 per stage.
scrape_ages() { # scrape_ages <file>
  { curl -fs "http://127.0.0.1:$PROCESSOR_PORT/metrics" || true; curl -fs "http://127.0.0.1:$MATERIALIZER_PORT/metrics" || true; } \
    | grep '_input_age_seconds_bucket' >"$1" || true
}
stages() { # stages <name> <key suffix> [workload]: the stage quantiles between the two scrapes of <name>
  record "stages$2" "$(python3 scripts/bench_stages.py "$OUT/ages_$1_before.prom" "$OUT/ages_$1_after.prom" "${3:-analytics}" "$2")"
  rm -f "$OUT/ages_$1_before.prom" "$OUT/ages_$1_after.prom"
}
# The freshness probe runs while the 256-connection load does.
scrape_ages "$OUT/ages_saturating_before.prom"
target/release/freshness-probe "$PROBE" >"$OUT/freshness.json" &
probe_pid=$!
# The second scrape when the probe stops probing (it then reads its records' log-append times back).
( sleep "$PROBE"; scrape_ages "$OUT/ages_saturating_after.prom" ) &
( sleep 4; rss_all load ) &
wrk_run post_256 256 post.lua http://127.0.0.1:8081
wait "$probe_pid"
wait
stages saturating ""

# Freshness again, at half the rate POST just reached with 256 connections (paced: Debian has no wrk2).
half=$(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["rps"] / 2))' "$OUT/post_256.json")
wait_processor_caught_up
log "POST paced at $half/s (half the 256-connection maximum), 256 connections, $DUR, with the freshness probe"
scrape_ages "$OUT/ages_half_load_before.prom"
target/release/freshness-probe "$PROBE" >"$OUT/freshness_half_load.json" &
probe_pid=$!
( sleep "$PROBE"; scrape_ages "$OUT/ages_half_load_after.prom" ) &
record post_half_load "$(target/release/paced-post --rate "$half" --connections 256 --duration "$DUR" | tail -1)"
wait "$probe_pid"
wait
stages half_load _half_load

# What the analytics emits cost per event over the POST phases above (5 % of their events spread over the past
# week, so several open hours change per checkpoint): every change re-sends its hour's whole record, sketch included.
wait_processor_caught_up
analytics_metric() { metric "$PROCESSOR_PORT" "$1{workload=\"analytics\"}"; }
record emitted "{\"analytics_emitted_bytes\": $(analytics_metric analytics_processor_aggregate_bytes_emitted_total), \
\"analytics_emitted_records\": $(analytics_metric analytics_processor_aggregates_emitted_total), \
\"analytics_events_applied\": $(analytics_metric analytics_processor_events_applied_total)}"

# The increments workload: POST /increment at 256 connections, with the staleness probe running; and the sums
# pipeline's rates over that load from the services' counters: what the processor emitted, what the materializer
# wrote, and the share of the wall time the materializer's PostgreSQL writes took (its rate over that share is what
# it could write).
wait_processor_caught_up
# increments_counters: "<emitted> <materialized> <PostgreSQL write seconds> <epoch seconds>" (0 for a series not there yet)
increments_counters() {
  local p m
  p="$(curl -fs "http://127.0.0.1:$PROCESSOR_PORT/metrics" || true)" m="$(curl -fs "http://127.0.0.1:$MATERIALIZER_PORT/metrics" || true)"
  series() { awk -v s="$1" '$1 == s {v = $2} END {print v + 0}'; }
  printf '%s %s %s %s\n' \
    "$(series 'analytics_processor_aggregates_emitted_total{workload="increments"}' <<<"$p")" \
    "$(series 'analytics_materializer_aggregates_consumed_total{workload="increments"}' <<<"$m")" \
    "$(series 'analytics_materializer_sink_duration_seconds_sum{sink="postgres",workload="increments"}' <<<"$m")" \
    "$(date +%s.%N)"
}
# The probe samples the processor's lag on the increments topic while it runs, and the stages' input ages are
# scraped around it (as for the freshness probe): which stage the staleness tail waits for.
increments_before="$(increments_counters)"
scrape_ages "$OUT/ages_increments_before.prom"
target/release/increment-staleness "$PROBE" --processor-metrics "127.0.0.1:$PROCESSOR_PORT" >"$OUT/increment_staleness.json" &
probe_pid=$!
( sleep "$PROBE"; scrape_ages "$OUT/ages_increments_after.prom" ) &
scrape_pid=$!
wrk_run increment_256 256 increment.lua http://127.0.0.1:8081
increments_after="$(increments_counters)"
wait "$probe_pid" "$scrape_pid"
stages increments _increments increments
record increment_rates "$(python3 - "$increments_before" "$increments_after" <<'EOF_RATES'
import json, sys
b, a = ([float(x or 0) for x in arg.split()] for arg in sys.argv[1:3])
secs = a[3] - b[3]
emitted, written, busy = a[0] - b[0], a[1] - b[1], a[2] - b[2]
print(json.dumps({"increment_emitted_per_s": emitted / secs, "increment_materialized_per_s": written / secs,
                  "increment_materializer_pg_busy": busy / secs,
                  "increment_materializer_capacity_per_s": written / busy if busy > 0 else None}))
EOF_RATES
)"

# The answers workload (decided writes: 201/200 once the processor has decided, then reads of the read model),
# all at 64 connections beside post_64 and ceiling_get_64. Keys carry a tag of this run, so a stack kept from an
# earlier run neither answers 409 to the creates nor holds more than 1,000 changes of the history key.
answers_setup() { # answers_setup <run>: 1,000 keys bench-<run>-<n>, and bench-<run>-history with 1,000 changes
  python3 - "$1" <<'EOF'
import concurrent.futures, http.client, json, sys, threading, time

run = sys.argv[1]
pool, changes = 1000, 1000
command, query = ("127.0.0.1", 8081), ("127.0.0.1", 8082)
history_key = f"bench-{run}-history"
local = threading.local()


def call(addr, method, path, body=None):
    """One request on this thread's keep-alive connection to addr: (status, body), status None if it broke."""
    if not hasattr(local, "conns"):
        local.conns = {}
    if addr not in local.conns:
        local.conns[addr] = http.client.HTTPConnection(*addr, timeout=30)
    conn = local.conns[addr]
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        del local.conns[addr]
        return None, b""


def write(method, path, body, request_id, want):
    """A write retried with the same id while its outcome is unknown (503, 429, a broken connection): the retry
    answers the first outcome, so each write is one change. False if it ends with another status, or once the
    setup has taken 3 minutes (a stack without the workload must not hold the bench up)."""
    while True:
        status, data = call(command, method, f"{path}?id={request_id}", body)
        if status == want:
            return True
        if status not in (None, 429, 503) or time.monotonic() > t0 + 180:
            print(f"answers setup: {method} {path} answered {status} {data[:200]!r}", file=sys.stderr)
            return False
        time.sleep(0.2)


t0 = time.monotonic()
value = "s" * 100
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    created = sum(ex.map(lambda n: write("POST", "/answers", {"key": f"bench-{run}-{n}", "value": value}, f"c{n}", 201),
                         range(pool)))
ok = write("POST", "/answers", {"key": history_key, "value": value}, "c", 201)
# Updates of one key serialize on its partition: a few in flight keep the processor's batches full.
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    updated = sum(ex.map(lambda n: write("PUT", f"/answers/{history_key}", {"value": f"{value} {n}"}, f"u{n}", 200),
                         range(1, changes)))
writes_failed = pool - created + (not ok) + changes - 1 - updated

# Waits (up to 120 s) until the read models hold every pool key and the whole history.
deadline = time.monotonic() + (120 if created or ok else 0)
pending, entries = set(range(pool)), 0
while time.monotonic() < deadline:
    status, data = call(query, "GET", f"/answers/{history_key}/history?limit={changes + 1}")
    entries = len(json.loads(data)) if status == 200 else 0
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        found = list(ex.map(lambda n: call(query, "GET", f"/answers/bench-{run}-{n}")[0] == 200, sorted(pending)))
    pending = {n for n, f in zip(sorted(pending), found) if not f}
    if not pending and entries >= changes:
        break
    time.sleep(0.5)
print(json.dumps({"answers_setup_s": time.monotonic() - t0, "answers_setup_writes_failed": writes_failed,
                  "answers_pool_keys_readable": pool - len(pending), "answers_history_entries": entries}))
EOF
}
wait_processor_caught_up # the increments backlog would slow the decisions
# And the materializer's: its catch-up of the increments sums (it writes slower than they arrive) would take the
# cores from the writes, which are judged against POST /analytics measured on a quiet pipeline.
wait_materializer_caught_up
answers_run="$(date +%s)$((RANDOM % 1000))"
log "answers: creating 1,000 keys and a key with 1,000 changes (run tag $answers_run)"
record answers_setup "$(answers_setup "$answers_run" | tail -1)"
wrk_run answers_create_64 64 answers-create.lua http://127.0.0.1:8081 "$answers_run"
# The creates leave the materializer behind (their history rows); the updates, too, are judged on a quiet pipeline.
wait_materializer_caught_up
wrk_run answers_update_64 64 answers-update.lua http://127.0.0.1:8081 "$answers_run"
wait_materializer_caught_up # the read models follow the writes above; the GETs measure reads alone
wrk_run answers_get_64 64 answers-get.lua http://127.0.0.1:8082 "$answers_run"
wrk_run answers_history_64 64 answers-history.lua http://127.0.0.1:8082 "$answers_run"

wrk_run get_current 64 get.lua http://127.0.0.1:8082
redis-cli -h 127.0.0.1 --scan --pattern "analytics:hour:*" | xargs -r redis-cli -h 127.0.0.1 del >/dev/null
wrk_run get_old 64 get-old.lua http://127.0.0.1:8082

# Time ranges, read from the PostgreSQL rows the POST phases above wrote (5 % of their events fall
# in the past week): first one answer of each, kept to show that the ranges hold data, then wrk.
wait_processor_caught_up
sleep 2 # the materializer's last batch
now_ms=$(date +%s%3N)
to_ms=$((now_ms - now_ms % 3600000 + 3600000))
range_check() { # range_check <path>: the answer, summarized in one JSON object
  { curl -fs "http://127.0.0.1:8082$1" || echo '{}'; } | python3 -c 'import json, sys
a = json.load(sys.stdin)
if not a:
    print("{}")
elif "buckets" in a:
    b = a["buckets"]
    print(json.dumps({"timeseries_buckets_48h": len(b), "timeseries_nonempty_buckets_48h": sum(1 for x in b if x["clicks"] + x["impressions"]),
                      "timeseries_events_48h": sum(x["clicks"] + x["impressions"] for x in b)}))
else:
    print(json.dumps({"aggregate_events_7d": a["clicks"] + a["impressions"], "aggregate_unique_users_7d": a["unique_users"]}))'
}
record range_timeseries "$(range_check "/analytics/timeseries?from=$((to_ms - 48 * 3600000))&to=$to_ms&interval=hour")"
record range_aggregate "$(range_check "/analytics/aggregate?from=$((to_ms - 168 * 3600000))&to=$to_ms")"
wrk_run timeseries_48h 64 timeseries.lua http://127.0.0.1:8082
wrk_run aggregate_7d 64 aggregate.lua http://127.0.0.1:8082

# The live side on a quiet stack: read-your-writes token round trips, then the SSE fan-out.
log "live-probe: ${LIVE[*]}"
record live "$(target/release/live-probe --command 127.0.0.1:8081 --query 127.0.0.1:8082 "${LIVE[@]}" | tail -1)"

log "whole processor: a backlog of $BACKLOG events written while it is stopped, then drained"
wait_processor_caught_up # so that the restarted processor has exactly the backlog to apply
stop_service processor
record backlog "$(target/release/backlog "$BACKLOG" | tail -1)"
# Started directly (as scripts/stack.sh starts it), so that the clock runs from the process start, without a build.
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:${BROKER_PORT:-9092}}"
t0=$(date +%s.%N)
nohup target/release/processor --ops-listen "0.0.0.0:$PROCESSOR_PORT" >>"$RUN_DIR/processor.log" 2>&1 &
echo $! >"$RUN_DIR/processor.pid"
# PERF=1: where the drain's CPU goes. `perf record` samples every thread of the processor at 999 Hz from its start
# until the backlog is applied (a few % of one core: the drain rate of such a run is not the bench's figure);
# target/bench/drain-profile.txt gets the shares by thread and by symbol.
perf_pid=""
if [[ -n ${PERF:-} ]]; then
  perf record -F 999 -o "$OUT/drain.perf.data" -p "$(cat "$RUN_DIR/processor.pid")" >/dev/null 2>&1 &
  perf_pid=$!
fi
deadline=$((SECONDS + 600))
until [[ $(metric_sum "$PROCESSOR_PORT" analytics_processor_events_applied_total) -ge $BACKLOG ]]; do
  ((SECONDS < deadline)) || { log "warning: the processor did not apply the backlog in 600s"; break; }
  sleep 0.05
done
t1=$(date +%s.%N)
if [[ -n $perf_pid ]]; then
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" || true
  { perf report -i "$OUT/drain.perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -v '^# [^S]' | grep .
    perf report -i "$OUT/drain.perf.data" --no-children --sort comm,dso,symbol --stdio --percent-limit 0.3 2>/dev/null \
      | grep -v '^#' | grep .; } >"$OUT/drain-profile.txt" || true
  rm -f "$OUT/drain.perf.data" "$OUT/drain.perf.data.old"
  log "drain profile: $OUT/drain-profile.txt"
fi
if ((SECONDS < deadline)); then
  record processor "{\"processor_backlog_events\": $BACKLOG, \"processor_drain_seconds\": $(python3 -c "print($t1 - $t0)")}"
fi
sleep 6 # let the state gauges refresh
record state_live "{\"live_state_bytes\": $(metric_sum "$PROCESSOR_PORT" analytics_processor_state_bytes), \"live_state_user_hours\": $(metric_sum "$PROCESSOR_PORT" analytics_processor_state_user_hours)}"

# Last: they load large data sets and stop their own stacks' services, nothing of the stack above.
promotions_section
widgets_section

python3 scripts/bench_report.py "$OUT" "$(nproc)" "${QUICK:-0}" "$DUR"
log "results: target/bench/results.json, report: docs/benchmarks.md"
sections_passed

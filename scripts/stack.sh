#!/usr/bin/env bash
# The local stack, natively: dependencies, Apache Kafka and the four services.
#
#   scripts/stack.sh deps          install/start what is missing (Redis, PostgreSQL, the Kafka jars)
#   scripts/stack.sh broker-up     start the broker if it is not running (BROKERS=3: a three-node cluster)
#   scripts/stack.sh broker-down   stop the broker this script started
#   scripts/stack.sh up            deps + release build + broker + services, wait until ready
#                                  (REDIS_CLUSTER=1: on a local Redis Cluster, scripts/redis-cluster.sh, not :6379)
#   scripts/stack.sh down          stop everything `up` started, by PID
#   scripts/stack.sh status        what is running
#   scripts/stack.sh observe       Prometheus (Debian package) scraping the four services on :9090
#   scripts/stack.sh reset         drop this stack's read models, state and broker log (asks nothing: explicit only)
#   scripts/stack.sh schemathesis-deps   the pinned schemathesis in $RUN_DIR/venv-schemathesis (make test's contract run)
#
# Everything runtime lives under $RUN_DIR (default ./run): logs, PID files, broker data.
# BROKERS=3 (`make up BROKERS=3`) runs Kafka as a three-node cluster (scripts/kafka.sh, docs/broker.md);
# the services then get all three in KAFKA_BROKERS.
# Idempotent: running `up` twice is harmless.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${RUN_DIR:-$ROOT/run}"
BROKER_PORT="${BROKER_PORT:-9092}"
BROKERS="${BROKERS:-1}"
COMMAND_PORT="${COMMAND_PORT:-8081}"
QUERY_PORT="${QUERY_PORT:-8082}"
PROCESSOR_PORT="${PROCESSOR_PORT:-9101}"
MATERIALIZER_PORT="${MATERIALIZER_PORT:-9102}"
export PATH="$HOME/.cargo/bin:$PATH"

LOG_TAG=stack
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

wait_for() { # wait_for <what> <seconds> <command...>
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < deadline)) || die "$what not ready after ${limit}s"
    sleep 0.2
  done
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then return; fi
  command -v redis-server >/dev/null || apt_install redis-server redis-tools
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/analytics.log
  wait_for "Redis" 20 bash -c 'redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG'
}

# PostgreSQL's shared buffers: a quarter of the machine's memory (6 GB on the 24 GiB machines the benches run on).
postgres_shared_buffers() {
  awk '/^MemTotal:/ { mb = int($2 / 4 / 1024); if (mb < 128) mb = 128
    if (mb >= 1024) print int(mb / 1024 + 0.5) "GB"; else print mb "MB" }' /proc/meminfo
}

ensure_postgres() {
  local buffers
  buffers="$(postgres_shared_buffers)"
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    # A PostgreSQL started earlier (by an older checkout, say) keeps its settings until it restarts: say so
    # instead of restarting it under whatever stacks are using it.
    local running
    running="$(psql -h 127.0.0.1 -U postgres -Atc 'SHOW shared_buffers' 2>/dev/null || true)"
    running="${running^^}" # 6GB, 128MB, 6144KB: numfmt's suffixes without the B
    if [[ -n "$running" && "$(numfmt --from=iec "${running%B}" 2>/dev/null)" != "$(numfmt --from=iec "${buffers%B}")" ]]; then
      log "PostgreSQL runs with shared_buffers = $running, not $buffers: restart it to apply" \
        "(pg_ctlcluster --skip-systemctl-redirect <version> main restart, with no stack running)"
    fi
    return
  fi
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local version
  version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)"
  log "starting PostgreSQL $version"
  # Trust auth on loopback, as on the CI machines.
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  # Room for several isolated stacks at once (the service tier, a bench beside a chaos row): each
  # stack's services hold pools, presence-lock sessions and listeners; Debian's 100 ran out.
  # Sized for the tables the benches build (4.9 GB of widget tables at 10M widgets; a quarter of the machine's
  # memory, postgres_shared_buffers): at Debian's 128 MB of shared buffers and 1 GB of WAL between checkpoints, upserts spread over
  # gigabytes each missed the buffers and wrote a full-page image to the WAL (the widgets' checkpoint write 160 →
  # 109 ms); at 2 GB the 10M widgets' mixed load still missed them, 6,359 requests/s against 10,155 at 6 GB
  # (docs/benchmarks-notes.md, "Shared buffers that hold the widgets"). Applied when PostgreSQL starts.
  printf '%s\n' "max_connections = 400" "shared_buffers = $buffers" "max_wal_size = 8GB" "checkpoint_timeout = 15min" \
    "wal_compression = lz4" >"/etc/postgresql/$version/main/conf.d/analytics.conf"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for "PostgreSQL" 30 pg_isready -q -h 127.0.0.1 -p 5432
}

deps() {
  ensure_redis
  ensure_postgres
  "$ROOT/scripts/kafka.sh" fetch
}

# The API contract run (e2e/tests/contract.rs): schemathesis, pinned, in a virtualenv of its own.
SCHEMATHESIS_VERSION=4.32.5
schemathesis_deps() {
  local venv="$RUN_DIR/venv-schemathesis"
  if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" == *" $SCHEMATHESIS_VERSION" ]]; then return; fi
  command -v python3 >/dev/null || apt_install python3
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  log "installing schemathesis $SCHEMATHESIS_VERSION in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  "$venv/bin/schemathesis" --version >/dev/null || die "schemathesis did not install in $venv"
}

ensure_prometheus() {
  command -v prometheus >/dev/null || apt_install prometheus
}

PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"

# Prometheus from Debian's package, scraping the four services of `up`.
observe() {
  ensure_prometheus
  mkdir -p "$RUN_DIR/prometheus"
  if alive "$RUN_DIR/prometheus.pid"; then log "Prometheus already running"; return; fi
  cat >"$RUN_DIR/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: analytics
    static_configs:
      - targets: ['127.0.0.1:$COMMAND_PORT', '127.0.0.1:$QUERY_PORT', '127.0.0.1:$PROCESSOR_PORT', '127.0.0.1:$MATERIALIZER_PORT']
YAML
  nohup prometheus --config.file="$RUN_DIR/prometheus.yml" --storage.tsdb.path="$RUN_DIR/prometheus" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >>"$RUN_DIR/prometheus.log" 2>&1 &
  echo $! >"$RUN_DIR/prometheus.pid"
  wait_for "Prometheus" 30 port_open "$PROMETHEUS_PORT"
  log "Prometheus on http://127.0.0.1:$PROMETHEUS_PORT (try: analytics_http_requests_total)"
}

kafka() { RUN_DIR="$RUN_DIR" BROKERS="$BROKERS" BROKER_PORT="$BROKER_PORT" "$ROOT/scripts/kafka.sh" "$@"; }

broker_up() { kafka up; }

broker_down() { kafka down; }

SERVICES=(command processor materializer query)

service_args() {
  case $1 in
    command) echo "--listen 0.0.0.0:$COMMAND_PORT" ;;
    query) echo "--listen 0.0.0.0:$QUERY_PORT" ;;
    processor) echo "--ops-listen 0.0.0.0:$PROCESSOR_PORT" ;;
    materializer) echo "--ops-listen 0.0.0.0:$MATERIALIZER_PORT" ;;
  esac
}

service_port() {
  case $1 in
    command) echo "$COMMAND_PORT" ;; query) echo "$QUERY_PORT" ;;
    processor) echo "$PROCESSOR_PORT" ;; materializer) echo "$MATERIALIZER_PORT" ;;
  esac
}

ready() { curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$1/ready"; }

up() {
  deps
  command -v curl >/dev/null || apt_install curl
  log "building release binaries"
  (cd "$ROOT" && cargo build --release --bins --quiet)
  broker_up
  KAFKA_BROKERS="${KAFKA_BROKERS:-$(kafka brokers)}"
  export KAFKA_BROKERS
  if [[ ${REDIS_CLUSTER:-} =~ ^(1|true|yes|on)$ ]]; then
    RUN_DIR="$RUN_DIR" "$ROOT/scripts/redis-cluster.sh" up
    REDIS_URL="$(RUN_DIR="$RUN_DIR" "$ROOT/scripts/redis-cluster.sh" urls)"
    export REDIS_URL REDIS_CLUSTER=true
  fi
  for s in "${SERVICES[@]}"; do
    if alive "$RUN_DIR/$s.pid"; then log "$s already running (pid $(cat "$RUN_DIR/$s.pid"))"; continue; fi
    # shellcheck disable=SC2046
    nohup "$ROOT/target/release/$s" $(service_args "$s") >>"$RUN_DIR/$s.log" 2>&1 &
    echo $! >"$RUN_DIR/$s.pid"
    log "started $s (pid $!, log $RUN_DIR/$s.log)"
  done
  for s in "${SERVICES[@]}"; do
    wait_for "$s (see $RUN_DIR/$s.log)" 60 ready "$(service_port "$s")"
    log "$s ready on :$(service_port "$s")"
  done
  cat <<MSG

The stack is up. Try:

  curl -i -X POST "http://localhost:$COMMAND_PORT/analytics?timestamp=\$(date +%s000)&user=alice&click"
  curl "http://localhost:$QUERY_PORT/analytics?timestamp=\$(date +%s000)"

Logs and PID files: $RUN_DIR   Stop with: make down
MSG
}

down() {
  stop_pid prometheus "$RUN_DIR/prometheus.pid"
  for s in query command materializer processor; do stop_pid "$s" "$RUN_DIR/$s.pid"; done
  RUN_DIR="$RUN_DIR" "$ROOT/scripts/redis-cluster.sh" down
  broker_down
}

# Explicit, never implicit: drops the PostgreSQL schema and Redis keys of this stack and the broker's log.
reset() {
  for s in "${SERVICES[@]}"; do alive "$RUN_DIR/$s.pid" && die "stop the stack first (make down)"; done
  broker_down
  local schema="${PG_SCHEMA:-analytics}" prefix="${REDIS_KEY_PREFIX:-analytics}"
  log "dropping PostgreSQL schema '$schema', Redis keys '$prefix:*' and the broker logs $RUN_DIR/kafka*/data"
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP SCHEMA IF EXISTS $schema CASCADE" 2>/dev/null || true
  redis-cli -h 127.0.0.1 --scan --pattern "$prefix:*" | xargs -r redis-cli -h 127.0.0.1 del >/dev/null || true
  rm -rf "$RUN_DIR/kafka/data" "$RUN_DIR"/kafka-[0-9]*/data "$RUN_DIR/kafka-cluster.id"
}

status() {
  kafka status
  for s in "${SERVICES[@]}" prometheus; do
    if alive "$RUN_DIR/$s.pid"; then echo "$s: running (pid $(cat "$RUN_DIR/$s.pid"))"; else echo "$s: stopped"; fi
  done
}

case "${1:-}" in
  deps) deps ;;
  prometheus-deps) ensure_prometheus ;;
  schemathesis-deps) schemathesis_deps ;;
  observe) observe ;;
  broker-up) broker_up ;;
  broker-down) broker_down ;;
  up) up ;;
  down) down ;;
  status) status ;;
  reset) reset ;;
  *) die "usage: $0 deps|broker-up|broker-down|up|down|status|observe|prometheus-deps|schemathesis-deps|reset" ;;
esac

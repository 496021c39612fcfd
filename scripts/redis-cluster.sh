#!/usr/bin/env bash
# A local Redis Cluster, natively: three masters with a replica each, Debian's redis-server, under run/.
#
#   scripts/redis-cluster.sh up      start every node that is not running; form the cluster once; wait until it serves
#   scripts/redis-cluster.sh down    stop the nodes this script started (by PID)
#   scripts/redis-cluster.sh status  each node: running or not, its role
#   scripts/redis-cluster.sh urls    the nodes' URLs, comma-separated (REDIS_URL with REDIS_CLUSTER=1)
#   scripts/redis-cluster.sh reset   down, then forget the cluster (its nodes.conf files): the next up forms it afresh
#
# Nodes listen on 127.0.0.1:$REDIS_CLUSTER_PORT and the five ports after it (default 7101-7106: clear of the
# shared Redis on 6379); each keeps nodes.conf (the cluster's layout) in $RUN_DIR/redis-cluster/<port>, its PID in
# $RUN_DIR/redis-cluster/<port>.pid and its log in $RUN_DIR/redis-cluster/<port>.log. No persistence: it is a
# cache, refilled from PostgreSQL. A node killed and started again (`up`) rejoins as a replica if its replica took
# over meanwhile. Environment: RUN_DIR, REDIS_CLUSTER_PORT (7101), REDIS_CLUSTER_NODE_TIMEOUT_MS (1000: how long a
# silent master is given before its replica takes over).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${RUN_DIR:-$ROOT/run}"
BASE_PORT="${REDIS_CLUSTER_PORT:-7101}"
NODE_TIMEOUT_MS="${REDIS_CLUSTER_NODE_TIMEOUT_MS:-1000}"
DIR="$RUN_DIR/redis-cluster"
PORTS=()
for i in 0 1 2 3 4 5; do PORTS+=("$((BASE_PORT + i))"); done

LOG_TAG=redis-cluster
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

cli() { # cli <port> <args...>
  local port=$1
  shift
  redis-cli -h 127.0.0.1 -p "$port" "$@"
}

start_node() {
  local port=$1
  if alive "$DIR/$port.pid"; then return; fi
  mkdir -p "$DIR/$port"
  # The cluster bus is on port+10000; `cluster-require-full-coverage no` keeps the other masters' slots
  # serving while one master is down, before its replica takes over.
  nohup redis-server --bind 127.0.0.1 --port "$port" --dir "$DIR/$port" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$NODE_TIMEOUT_MS" \
    --cluster-require-full-coverage no --cluster-replica-validity-factor 0 \
    --save '' --appendonly no --daemonize no --logfile '' >>"$DIR/$port.log" 2>&1 &
  echo $! >"$DIR/$port.pid"
  log "started node :$port (pid $!)"
}

wait_answering() {
  local port=$1
  for _ in $(seq 1 100); do
    [[ "$(cli "$port" PING 2>/dev/null)" == PONG ]] && return
    sleep 0.1
  done
  die "node :$port does not answer (see $DIR/$port.log)"
}

cluster_ok() { cli "$BASE_PORT" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok'; }

# The cluster is formed when the first node knows all six and every slot is assigned.
formed() {
  local info
  info="$(cli "$BASE_PORT" CLUSTER INFO 2>/dev/null)" || return 1
  grep -q '^cluster_known_nodes:6' <<<"$info" && grep -q '^cluster_slots_assigned:16384' <<<"$info"
}

# Every replica has finished its first sync with its master (else a write's WAIT for it would time out).
replicas_synced() {
  for port in "${PORTS[@]}"; do
    [[ "$(cli "$port" ROLE 2>/dev/null | head -1)" == slave ]] || continue
    cli "$port" INFO replication 2>/dev/null | grep -q '^master_link_status:up' || return 1
  done
}

up() {
  command -v redis-server >/dev/null || apt_install redis-server
  for port in "${PORTS[@]}"; do start_node "$port"; done
  for port in "${PORTS[@]}"; do wait_answering "$port"; done
  if ! formed; then
    log "forming the cluster: masters and replicas on ${PORTS[*]}"
    local nodes=()
    for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >>"$DIR/create.log" 2>&1 \
      || die "redis-cli --cluster create failed (see $DIR/create.log)"
  fi
  for _ in $(seq 1 200); do
    if formed && cluster_ok && replicas_synced; then
      log "Redis Cluster serving on 127.0.0.1:${PORTS[0]}-${PORTS[5]}"
      return
    fi
    sleep 0.1
  done
  die "the cluster is not serving after 20 s (see $DIR/*.log)"
}

down() {
  for port in "${PORTS[@]}"; do stop_pid "redis node :$port" "$DIR/$port.pid" 5; done
}

status() {
  for port in "${PORTS[@]}"; do
    if alive "$DIR/$port.pid"; then
      echo ":$port running (pid $(cat "$DIR/$port.pid")), $(cli "$port" ROLE 2>/dev/null | head -1)"
    else
      echo ":$port stopped"
    fi
  done
}

urls() {
  local out=()
  for port in "${PORTS[@]}"; do out+=("redis://127.0.0.1:$port"); done
  (IFS=,; echo "${out[*]}")
}

reset() {
  down
  rm -rf "$DIR"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  urls) urls ;;
  reset) reset ;;
  *) die "usage: $0 up|down|status|urls|reset" ;;
esac

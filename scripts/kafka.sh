#!/usr/bin/env bash
# Apache Kafka, natively: fetched from Maven Central, one KRaft node (broker + controller) under run/,
# or, with BROKERS=3, a cluster of three such nodes (replication factor 3, min.insync.replicas=2).
#
#   scripts/kafka.sh fetch        fetch the jars into $RUN_DIR/kafka/lib if they are missing
#   scripts/kafka.sh up           fetch, format each node's log once, start every node that is not
#                                 running, wait until each answers
#   scripts/kafka.sh down         stop every node this script started here (by PID), one node or cluster
#   scripts/kafka.sh status       running or not, node by node
#   scripts/kafka.sh brokers      the bootstrap list for KAFKA_BROKERS (host:port,...)
#   scripts/kafka.sh kill N       kill -9 node N (chaos: no controlled shutdown); `up` starts it again
#   scripts/kafka.sh controller   the node id of the active controller (cluster)
#
# One node: log in $RUN_DIR/kafka/data, PID in $RUN_DIR/kafka.pid, output in $RUN_DIR/kafka.log,
# ports BROKER_PORT (9092) and CONTROLLER_PORT (9093). Three nodes: node N (1..3) keeps its log in
# $RUN_DIR/kafka-N/data, its PID in $RUN_DIR/kafka-N.pid, its output in $RUN_DIR/kafka-N.log, and
# listens on BROKER_PORT + 2(N-1) and CONTROLLER_PORT + 2(N-1) (9092/9093, 9094/9095, 9096/9097).
# Logs survive down/up. Settings: scripts/kafka/server.properties, and for a cluster
# scripts/kafka/cluster.properties over it (why: docs/broker.md).
# Environment: RUN_DIR, BROKERS (1 or 3), BROKER_PORT, CONTROLLER_PORT, KAFKA_HEAP (512m, per node).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${RUN_DIR:-$ROOT/run}"
BROKERS="${BROKERS:-1}"
BROKER_PORT="${BROKER_PORT:-9092}"
CONTROLLER_PORT="${CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
HERE="$ROOT/scripts/kafka"
LIB="$RUN_DIR/kafka/lib"
CLUSTER_ID_FILE="$RUN_DIR/kafka-cluster.id"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"

LOG_TAG=kafka
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

[[ $BROKERS == 1 || $BROKERS == 3 ]] || die "BROKERS is 1 (one node) or 3 (a cluster), not '$BROKERS'"

ensure_java() {
  command -v java >/dev/null || { log "installing Java 17 from Debian packages";
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }
  command -v mvn >/dev/null || { log "installing Maven from Debian packages";
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null; }
}

fetch() {
  if [[ -f "$LIB/kafka_2.13-$VERSION.jar" && -f "$LIB/.complete-$VERSION" ]]; then return; fi
  ensure_java
  log "fetching Apache Kafka $VERSION from Maven Central into $LIB"
  rm -rf "$LIB"; mkdir -p "$LIB"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIB" \
    || die "could not fetch Kafka $VERSION with Maven"
  touch "$LIB/.complete-$VERSION"
}

java_cmd() { # java_cmd <main class> <args...>; exec, so that a background job's PID is the JVM's
  exec java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
    -cp "$LIB/*" "$@"
}

# The nodes: 1 for one node, 1 2 3 for a cluster.
nodes() { seq 1 "$BROKERS"; }

# node <n>: sets the NODE_* paths and ports of node n. One node keeps the paths it always had.
node() {
  NODE_ID=$1
  if ((BROKERS == 1)); then
    NODE_DIR="$RUN_DIR/kafka" NODE_PIDFILE="$RUN_DIR/kafka.pid" NODE_LOG="$RUN_DIR/kafka.log"
  else
    NODE_DIR="$RUN_DIR/kafka-$1" NODE_PIDFILE="$RUN_DIR/kafka-$1.pid" NODE_LOG="$RUN_DIR/kafka-$1.log"
  fi
  NODE_DATA="$NODE_DIR/data"
  NODE_PORT=$((BROKER_PORT + 2 * ($1 - 1)))
  NODE_CONTROLLER_PORT=$((CONTROLLER_PORT + 2 * ($1 - 1)))
}

voters() {
  local n out=()
  for n in $(nodes); do out+=("$n@127.0.0.1:$((CONTROLLER_PORT + 2 * (n - 1)))"); done
  (IFS=,; echo "${out[*]}")
}

brokers() {
  local n out=()
  for n in $(nodes); do out+=("127.0.0.1:$((BROKER_PORT + 2 * (n - 1)))"); done
  (IFS=,; echo "${out[*]}")
}

# server.properties, for a cluster with the keys of cluster.properties replaced by its lines.
settings() {
  if ((BROKERS == 1)); then cat "$HERE/server.properties"; return; fi
  awk -F= 'NR == FNR { if ($0 !~ /^#/ && NF > 1) over[$1] = 1; next }
           !($1 in over) || /^#/' "$HERE/cluster.properties" "$HERE/server.properties"
  cat "$HERE/cluster.properties"
}

config() { # for the current node
  mkdir -p "$NODE_DIR"
  { settings | sed "s/^node.id=.*/node.id=$NODE_ID/"
    echo "listeners=PLAINTEXT://127.0.0.1:$NODE_PORT,CONTROLLER://127.0.0.1:$NODE_CONTROLLER_PORT"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$NODE_PORT"
    echo "controller.quorum.voters=$(voters)"
    echo "log.dirs=$NODE_DATA"
  } >"$NODE_DIR/server.properties"
}

# One cluster id for every node of a cluster, made once.
cluster_id() {
  if [[ ! -s $CLUSTER_ID_FILE ]]; then
    mkdir -p "$RUN_DIR"
    (java_cmd kafka.tools.StorageTool random-uuid) 2>/dev/null | tail -1 >"$CLUSTER_ID_FILE"
  fi
  cat "$CLUSTER_ID_FILE"
}

format_once() { # the current node
  if [[ -f "$NODE_DATA/meta.properties" ]]; then return; fi
  local id
  if ((BROKERS == 1)); then id="$( (java_cmd kafka.tools.StorageTool random-uuid) 2>/dev/null | tail -1)"
  else id="$(cluster_id)"; fi
  log "formatting a new KRaft log in $NODE_DATA (cluster $id, node $NODE_ID)"
  (java_cmd kafka.tools.StorageTool format -t "$id" -c "$NODE_DIR/server.properties") >>"$NODE_LOG" 2>&1 \
    || die "formatting the log failed (see $NODE_LOG)"
}

# Answers a metadata request, not just a TCP connect: the port opens before the broker is ready.
answers() { # <port> <log> <from line>
  port_open "$1" && grep -q "Kafka Server started" <(tail -n +"$3" "$2" 2>/dev/null)
}

up() {
  local n started=() from=()
  for n in $(nodes); do
    node "$n"
    if alive "$NODE_PIDFILE"; then continue; fi
    if port_open "$NODE_PORT"; then
      ((BROKERS == 1)) || die "something not started by this script answers on :$NODE_PORT, node $n's port" \
        "(a single node of this run directory? scripts/kafka.sh down first)"
      log "a broker already answers on :$NODE_PORT (not started by us); using it"; return
    fi
    fetch
    config
    format_once
    from[n]=$(( $(wc -l <"$NODE_LOG" 2>/dev/null || echo 0) + 1 ))
    log "starting Apache Kafka $VERSION node $n on :$NODE_PORT (heap $KAFKA_HEAP, log $NODE_DATA)"
    (java_cmd kafka.Kafka "$NODE_DIR/server.properties") </dev/null >>"$NODE_LOG" 2>&1 &
    echo $! >"$NODE_PIDFILE"
    started+=("$n")
  done
  # A cluster's nodes start together: none is ready before a majority of the controllers runs.
  local deadline=$((SECONDS + 120))
  for n in "${started[@]}"; do
    node "$n"
    until answers "$NODE_PORT" "$NODE_LOG" "${from[n]}"; do
      alive "$NODE_PIDFILE" || die "Kafka node $n exited during start-up (see $NODE_LOG)"
      ((SECONDS < deadline)) || die "Kafka node $n not ready after 120s (see $NODE_LOG)"
      sleep 0.3
    done
    log "Kafka ready (node $n, pid $(cat "$NODE_PIDFILE"), :$NODE_PORT)"
  done
}

# Every node this run directory has running, whatever BROKERS says now (`make down` after
# `make up BROKERS=3` stops the cluster), all at once: a cluster stopped node by node loses its
# controller quorum before the last nodes finish their controlled shutdown.
down() {
  local pidfile
  for pidfile in "$RUN_DIR/kafka.pid" "$RUN_DIR"/kafka-[0-9].pid; do
    [[ -e $pidfile ]] || continue
    local name=Kafka n=${pidfile##*/kafka-}
    [[ $pidfile == */kafka.pid ]] || name="Kafka node ${n%.pid}"
    stop_pid "$name" "$pidfile" 30 &
  done
  wait
}

kill9() {
  if ! [[ ${1:-} =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > BROKERS)); then die "usage: $0 kill <node 1..$BROKERS>"; fi
  node "$1"
  alive "$NODE_PIDFILE" || die "node $1 is not running"
  local pid; pid="$(cat "$NODE_PIDFILE")"
  log "kill -9 node $1 (pid $pid)"
  kill -KILL "$pid"
  while pid_alive "$pid"; do sleep 0.05; done
  rm -f "$NODE_PIDFILE"
}

# The leader of the metadata quorum: each running node's quorum-state names the leader of the
# newest epoch it knows; the newest of those is the active controller.
controller() {
  local n state best_epoch=-1 best=""
  for n in $(nodes); do
    node "$n"
    alive "$NODE_PIDFILE" || continue
    state="$(cat "$NODE_DATA/__cluster_metadata-0/quorum-state" 2>/dev/null)" || continue
    local id epoch
    id="$(sed -n 's/.*"leaderId":\(-\{0,1\}[0-9]*\).*/\1/p' <<<"$state")"
    epoch="$(sed -n 's/.*"leaderEpoch":\([0-9]*\).*/\1/p' <<<"$state")"
    if [[ -n $id && -n $epoch ]] && ((id > 0 && epoch > best_epoch)); then best_epoch=$epoch best=$id; fi
  done
  [[ -n $best ]] || die "no running node knows the active controller"
  echo "$best"
}

# The nodes of BROKERS, then any node of the other layout that runs here (a cluster while
# BROKERS is unset, say).
status() {
  local n pidfile
  for n in $(nodes); do
    node "$n"
    local name=kafka; ((BROKERS == 1)) || name="kafka node $n (:$NODE_PORT)"
    if alive "$NODE_PIDFILE"; then echo "$name: running (pid $(cat "$NODE_PIDFILE"))"; else echo "$name: stopped"; fi
  done
  for pidfile in "$RUN_DIR/kafka.pid" "$RUN_DIR"/kafka-[0-9].pid; do
    if ((BROKERS == 1)) && [[ $pidfile == */kafka.pid ]]; then continue; fi
    if ((BROKERS > 1)) && [[ $pidfile != */kafka.pid ]]; then continue; fi
    if alive "$pidfile"; then echo "kafka ($(basename "$pidfile" .pid)): running (pid $(cat "$pidfile"))"; fi
  done
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) status ;;
  brokers) brokers ;;
  kill) kill9 "${2:-}" ;;
  controller) controller ;;
  *) die "usage: $0 fetch|up|down|status|brokers|kill N|controller" ;;
esac

#!/usr/bin/env bash
# Apache Kafka, natively: fetched from Maven Central, one KRaft node (broker + controller) under run/.
#
#   scripts/kafka.sh fetch   fetch the jars into $RUN_DIR/kafka/lib if they are missing
#   scripts/kafka.sh up      fetch, format the log once, start the broker, wait until it answers
#   scripts/kafka.sh down    stop the broker this script started (by PID)
#   scripts/kafka.sh status  running or not
#
# The log lives in $RUN_DIR/kafka/data and survives down/up. Settings: scripts/kafka/server.properties
# (why: docs/broker.md). Environment: RUN_DIR, BROKER_PORT (9092), CONTROLLER_PORT (9093), KAFKA_HEAP (512m).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${RUN_DIR:-$ROOT/run}"
BROKER_PORT="${BROKER_PORT:-9092}"
CONTROLLER_PORT="${CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
HERE="$ROOT/scripts/kafka"
KAFKA_DIR="$RUN_DIR/kafka"
LIB="$KAFKA_DIR/lib"
DATA="$KAFKA_DIR/data"
PIDFILE="$RUN_DIR/kafka.pid"
LOG="$RUN_DIR/kafka.log"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"

LOG_TAG=kafka
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

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

config() {
  mkdir -p "$KAFKA_DIR"
  { cat "$HERE/server.properties"
    echo "listeners=PLAINTEXT://127.0.0.1:$BROKER_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$BROKER_PORT"
    echo "controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT"
    echo "log.dirs=$DATA"
  } >"$KAFKA_DIR/server.properties"
}

format_once() {
  if [[ -f "$DATA/meta.properties" ]]; then return; fi
  local id; id="$( (java_cmd kafka.tools.StorageTool random-uuid) 2>/dev/null | tail -1)"
  log "formatting a new KRaft log in $DATA (cluster $id)"
  (java_cmd kafka.tools.StorageTool format -t "$id" -c "$KAFKA_DIR/server.properties") >>"$LOG" 2>&1 \
    || die "formatting the log failed (see $LOG)"
}

# Answers a metadata request, not just a TCP connect: the port opens before the broker is ready.
answers() {
  port_open "$BROKER_PORT" && grep -q "Kafka Server started" <(tail -n +"${1:-1}" "$LOG" 2>/dev/null)
}

up() {
  if alive "$PIDFILE"; then return; fi
  if port_open "$BROKER_PORT"; then log "a broker already answers on :$BROKER_PORT (not started by us); using it"; return; fi
  fetch
  config
  format_once
  local from; from=$(( $(wc -l <"$LOG" 2>/dev/null || echo 0) + 1 ))
  log "starting Apache Kafka $VERSION on :$BROKER_PORT (heap $KAFKA_HEAP, log $DATA)"
  (java_cmd kafka.Kafka "$KAFKA_DIR/server.properties") </dev/null >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + 90))
  until answers "$from"; do
    alive "$PIDFILE" || die "Kafka exited during start-up (see $LOG)"
    ((SECONDS < deadline)) || die "Kafka not ready after 90s (see $LOG)"
    sleep 0.3
  done
  log "Kafka ready (pid $(cat "$PIDFILE"))"
}

down() { stop_pid Kafka "$PIDFILE" 30; }

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) if alive "$PIDFILE"; then echo "kafka: running (pid $(cat "$PIDFILE"))"; else echo "kafka: stopped"; fi ;;
  *) die "usage: $0 fetch|up|down|status" ;;
esac

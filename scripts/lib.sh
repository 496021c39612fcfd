# Shared by scripts/stack.sh and scripts/kafka.sh: logging, ports and PID files.
# Source it after setting LOG_TAG.

log() { printf '\033[1m[%s]\033[0m %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True if the PID file names a live process.
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() { # stop_pid <name> <pidfile> [seconds before SIGKILL, default 15]
  local pidfile=$2 grace=${3:-15}
  if alive "$pidfile"; then
    local pid; pid="$(cat "$pidfile")"
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "$1 did not stop in ${grace}s; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pidfile"
}

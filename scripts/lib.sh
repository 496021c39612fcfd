# Shared by scripts/stack.sh and scripts/kafka.sh: logging, ports and PID files.
# Source it after setting LOG_TAG.

log() { printf '\033[1m[%s]\033[0m %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True if process <pid> runs. One that is gone, or a zombie (killed, not yet
# reaped by its parent: `kill -0` still succeeds on it) or dead (state X), is stopped,
# so `make up` right after a kill starts the service again instead of waiting for it.
pid_alive() {
  local state
  [[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null || return 1
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n $state && $state != [ZX]* ]]
}

# True if the PID file names a running process (see pid_alive).
alive() { [[ -f "$1" ]] && pid_alive "$(cat "$1")"; }

stop_pid() { # stop_pid <name> <pidfile> [seconds before SIGKILL, default 15]
  local pidfile=$2 grace=${3:-15}
  if alive "$pidfile"; then
    local pid; pid="$(cat "$pidfile")"
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 5))); do pid_alive "$pid" || break; sleep 0.2; done
    if pid_alive "$pid"; then log "$1 did not stop in ${grace}s; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pidfile"
}

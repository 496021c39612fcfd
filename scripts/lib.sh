# shellcheck shell=bash
# Shared by the scripts: logging, ports, PID files, Debian packages and timed stages.
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

# Installs Debian packages (idempotent callers check `command -v` first).
apt_install() {
  command -v apt-get >/dev/null || die "need $* but apt-get is not available"
  log "installing $* from Debian packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Timed stages: `stage <name> <command...>` runs the command, prints how long it
# took, and records it; `stage_summary` prints the table of every stage so far
# (call it from an EXIT trap so a failed run shows it too). The command runs in
# a subshell with `set -e` (a function stops at its first failing command); the
# stage returns its status, so under `set -e` a failing stage ends the script.
STAGE_NAMES=() STAGE_TIMES=() STAGE_RESULTS=()
stage() {
  local name=$1 start=$EPOCHREALTIME status=0 errexit=0
  shift
  printf '\n\033[1m== %s\033[0m\n' "$name"
  [[ $- == *e* ]] && errexit=1
  set +e
  (set -e; "$@")
  status=$?
  if ((errexit)); then set -e; fi
  local took
  took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  STAGE_NAMES+=("$name") STAGE_TIMES+=("$took")
  if ((status == 0)); then STAGE_RESULTS+=(ok); else STAGE_RESULTS+=("FAILED ($status)"); fi
  printf '\033[1m-- %s: %s s%s\033[0m\n' "$name" "$took" "$( ((status == 0)) || echo ", failed ($status)")"
  return "$status"
}

stage_summary() {
  ((${#STAGE_NAMES[@]})) || return 0
  local i total=0
  printf '\n%-52s %9s  %s\n' "stage" "seconds" "result"
  for i in "${!STAGE_NAMES[@]}"; do
    printf '%-52s %9s  %s\n' "${STAGE_NAMES[$i]}" "${STAGE_TIMES[$i]}" "${STAGE_RESULTS[$i]}"
    total=$(awk -v a="$total" -v b="${STAGE_TIMES[$i]}" 'BEGIN { printf "%.1f", a + b }')
  done
  printf '%-52s %9s\n' "total" "$total"
}

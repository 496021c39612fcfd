#!/usr/bin/env bash
# Headless-browser test tooling: Debian's chromium driven by playwright-core.
#
#   scripts/browser.sh install   chromium and Node.js >= 20 (apt) if missing; playwright-core (npm ci) into
#                                e2e/browser/node_modules if missing or not what the lock says
#   scripts/browser.sh smoke     install, then e2e/browser/smoke.mjs (screenshot in target/browser/)
#   scripts/browser.sh run FILE  install, then one browser test (e.g. e2e/browser/dashboard.mjs)
#   scripts/browser.sh versions  chromium, node and playwright-core versions
#
# Idempotent: a second install does nothing. Playwright never downloads a browser here:
# lib.mjs launches /usr/bin/chromium through executablePath.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_TAG=browser
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
BROWSER_DIR="$ROOT/e2e/browser"
# Written after a successful `npm ci`: the lock it installed.
STAMP="$BROWSER_DIR/node_modules/.installed-lock"

timed() { # timed <label> <command...>: runs it and logs how long it took
  local label=$1 start=$SECONDS; shift
  "$@"
  log "$label took $((SECONDS - start))s"
}

as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }

install_chromium() {
  if command -v chromium >/dev/null; then return; fi
  log "installing chromium (Debian package)"
  timed "apt-get update" as_root apt-get update -q
  timed "apt-get install chromium" as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends chromium
}

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

# Node.js >= 20 with npm (playwright-core needs 20): Debian's packages if missing.
install_node() {
  if (($(node_major) >= 20)) && command -v npm >/dev/null; then return; fi
  log "installing Node.js and npm (Debian packages)"
  timed "apt-get update" as_root apt-get update -q
  timed "apt-get install nodejs" as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends nodejs
  # Debian packages npm apart; NodeSource's nodejs carries it.
  if ! command -v npm >/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
  fi
  (($(node_major) >= 20)) ||
    die "Node.js $(node --version 2>/dev/null || echo missing) is too old: playwright-core needs >= 20 (Debian 13, or NodeSource on Debian 12)"
}

install_playwright() {
  if [[ -f "$STAMP" ]] && cmp -s "$STAMP" "$BROWSER_DIR/package-lock.json"; then return; fi
  log "installing playwright-core (npm ci in e2e/browser)"
  # playwright-core downloads nothing on install; the variable guards against a
  # future dependency that would.
  (cd "$BROWSER_DIR" && timed "npm ci" env PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
    npm ci --no-audit --no-fund --loglevel=error)
  cp "$BROWSER_DIR/package-lock.json" "$STAMP"
}

cmd_install() {
  install_chromium
  install_node
  install_playwright
  log "ready: $(versions_line)"
}

versions_line() {
  local chromium_v playwright_v
  # chromium's wrapper script prints a harmless shell warning on stderr; keep only the version.
  chromium_v="$(chromium --version 2>/dev/null | head -n1 || echo missing)"
  playwright_v="$(node -p "require('$BROWSER_DIR/node_modules/playwright-core/package.json').version" 2>/dev/null || echo missing)"
  echo "$chromium_v; node $(node --version 2>/dev/null || echo missing); playwright-core $playwright_v"
}

cmd_run() {
  [[ $# -eq 1 && -f "$1" ]] || die "usage: scripts/browser.sh run e2e/browser/<test>.mjs"
  cmd_install
  log "running $1"
  node "$1"
}

case "${1:-}" in
  install) cmd_install ;;
  smoke) cd "$ROOT" && cmd_run e2e/browser/smoke.mjs ;;
  run) shift; cd "$ROOT" && cmd_run "$@" ;;
  versions) cd "$ROOT" && versions_line ;;
  *) die "usage: scripts/browser.sh install|smoke|run FILE|versions" ;;
esac

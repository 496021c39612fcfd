#!/usr/bin/env bash
# Cargo's target runner for `make test-unit` (scripts/test-unit.sh sets it up):
# runs one test binary or doctest, `isolate.sh <binary> <args...>`, in a network
# namespace of its own (only loopback, nothing listening: a connection to
# PostgreSQL, Redis or Kafka is refused) and as a non-root user.
#
#   UNIT_ISOLATION=root    unshare --net, then setpriv to UNIT_USER
#   UNIT_ISOLATION=rootnet unshare --net, staying root (a checkout UNIT_USER cannot read)
#   UNIT_ISOLATION=userns  not root: a user namespace (mapped to root, to bring loopback
#                          up), then a nested one mapping the caller's own uid back
# UNIT_TMP is the run's temporary directory (HOME and TMPDIR of the tests).
set -euo pipefail
: "${UNIT_ISOLATION:?run through scripts/test-unit.sh}" "${UNIT_TMP:?run through scripts/test-unit.sh}"

if [[ ${1:-} == --inside ]]; then
  # In the new namespace: loopback up (tests bind listeners on port 0), then the test.
  shift
  ip link set lo up
  if [[ $UNIT_ISOLATION == root ]]; then
    exec setpriv --reuid="$UNIT_USER" --regid="$UNIT_USER" --init-groups \
      env HOME="$UNIT_TMP" TMPDIR="$UNIT_TMP" USER="$UNIT_USER" LOGNAME="$UNIT_USER" "$@"
  fi
  if [[ $UNIT_ISOLATION == rootnet ]]; then exec env HOME="$UNIT_TMP" TMPDIR="$UNIT_TMP" "$@"; fi
  exec unshare --map-user="$UNIT_UID" --map-group="$UNIT_GID" env HOME="$UNIT_TMP" TMPDIR="$UNIT_TMP" "$@"
fi

bin=$1
shift
if [[ $UNIT_ISOLATION == root ]]; then
  # A doctest is built in rustdoc's private temporary directory: copy it where the user can run it.
  if ! setpriv --reuid="$UNIT_USER" --regid="$UNIT_USER" --init-groups test -x "$bin"; then
    copy="$(mktemp "$UNIT_TMP/bin.XXXXXX")"
    cp "$bin" "$copy"
    chmod 755 "$copy"
    chown "$UNIT_USER:" "$copy"
    bin=$copy
  fi
  exec unshare --net -- "$0" --inside "$bin" "$@"
fi
if [[ $UNIT_ISOLATION == rootnet ]]; then exec unshare --net -- "$0" --inside "$bin" "$@"; fi
UNIT_UID="$(id -u)" UNIT_GID="$(id -g)"
export UNIT_UID UNIT_GID
exec unshare --net --map-root-user -- "$0" --inside "$bin" "$@"

#!/bin/sh
# rdv container entrypoint. Started as root only to read what the host keeps readable to its owner alone: the
# TLS folder (RDV_TLS_DIR, mounted read-only) and the X cookie (RDV_XAUTHORITY_FILE). It copies them to a tmpfs
# owned by uid 10001, then runs the service as uid 10001 with the groups compose added (/dev/snd, /dev/input).
# A file it cannot read is named in one line, and the container stops.
set -eu
RUN_AS=10001
if [ "$(id -u)" != 0 ]; then
  exec "$@"  # started with --user: nothing to hand over
fi
private=/run/rdv
mkdir -p "$private"
chown "$RUN_AS:$RUN_AS" "$private"
chmod 0700 "$private"

copy() {  # copy SRC DST WHAT
  if ! err=$(cat "$1" 2>&1 >"$2"); then
    echo "rdv: cannot read $1 ($3): ${err##*: }" >&2
    exit 1
  fi
  chown "$RUN_AS:$RUN_AS" "$2"
  chmod 0400 "$2"
}

if [ -n "${RDV_TLS_DIR:-}" ]; then
  mkdir -p "$private/tls"
  for name in ca.pem cert.pem key.pem; do
    copy "$RDV_TLS_DIR/$name" "$private/tls/$name" "mounted from RDV_TLS_HOST_DIR; make it with services.common.certs"
  done
  chown "$RUN_AS:$RUN_AS" "$private/tls"
  export RDV_TLS_DIR="$private/tls"
fi
if [ -n "${DISPLAY:-}" ] && [ -n "${RDV_XAUTHORITY_FILE:-}" ] && [ -s "$RDV_XAUTHORITY_FILE" ]; then
  copy "$RDV_XAUTHORITY_FILE" "$private/Xauthority" "the X cookie from XAUTHORITY"
  export XAUTHORITY="$private/Xauthority"
fi

groups=$(id -G | tr ' ' '\n' | grep -vx 0 | paste -sd, -) || true
if [ -n "$groups" ]; then
  exec setpriv --reuid="$RUN_AS" --regid="$RUN_AS" --groups="$groups" -- "$@"
fi
exec setpriv --reuid="$RUN_AS" --regid="$RUN_AS" --clear-groups -- "$@"

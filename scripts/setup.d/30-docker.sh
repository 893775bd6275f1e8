#!/usr/bin/env bash
# A Docker engine and the two local images the docker target is tested with (no registry needed):
# Debian's docker.io when dockerd is missing, dockerd started in the background when no daemon
# answers (log in .gpuinfer/docker/dockerd.log), then dockerfiles/build-images.sh
# (gpuinfer/sim:local and gpuinfer/vllm-cpu:local, from this machine's Python and the project's
# .venv). Each step is timed. Where Docker cannot be had (not root, no apt), it says so and stops:
# the docker tests then skip with the reason, except under GPUINFER_STRICT_SETUP=1 (.ci/run), where this is an error.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=.gpuinfer/docker
mkdir -p "$state"

give_up() {
  echo "==> docker: $1"
  if [ "${GPUINFER_STRICT_SETUP:-0}" = "1" ]; then exit 1; fi
  echo "==> docker: the docker tests will skip with the reason"; exit 0
}

if ! command -v dockerd >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || give_up "dockerd is not installed and this is not root (apt-get install docker.io)"
  command -v apt-get >/dev/null 2>&1 || give_up "dockerd is not installed and there is no apt-get"
  started=$SECONDS
  echo "==> docker: installing Debian's docker.io"
  apt-get update -qq >"$state/apt.log" 2>&1 || give_up "apt-get update failed (see $state/apt.log)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >>"$state/apt.log" 2>&1 \
    || give_up "apt-get install docker.io failed (see $state/apt.log)"
  echo "==> docker: docker.io installed in $((SECONDS - started)) s"
fi

if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || give_up "no Docker daemon answers and this is not root to start one"
  started=$SECONDS
  echo "==> docker: starting dockerd in the background (log: $state/dockerd.log)"
  setsid nohup dockerd >"$state/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -20 "$state/dockerd.log"; give_up "dockerd did not come up in 60 s"; }
  echo "==> docker: dockerd answers after $((SECONDS - started)) s"
fi

bash dockerfiles/build-images.sh

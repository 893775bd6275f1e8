#!/usr/bin/env bash
# vLLM-CPU in a Docker container (--engine docker): the compat suite's core checks (server basics,
# completion and chat shapes, streaming equal to non-streaming) against gpuinfer/vllm-cpu:local,
# built by scripts/setup.d/30-docker.sh. The container's lifecycle (start, crash, kill, SIGTERM,
# stale sweep) is checked in the main stage by tests/docker with the simulator image.
# Exits 0 with a message when no Docker daemon answers or the image is missing (setup skipped it).
set -uo pipefail
cd "$(dirname "$0")/../.."
image=${GPUINFER_DOCKER_VLLM_IMAGE:-gpuinfer/vllm-cpu:local}
if ! docker info >/dev/null 2>&1; then
  echo "==> docker: no Docker daemon answers; skipping the vLLM-in-a-container checks"; exit 0
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "==> docker: image $image not built (bash dockerfiles/build-images.sh); skipping"; exit 0
fi
exec ${GPUINFER_PYTEST:-.venv/bin/pytest} -p no:cacheprovider --engine docker --image "$image" \
  tests/compat/test_server_basics.py \
  tests/compat/test_api_conformance.py \
  -k "test_server_basics or completion_shape or chat_completion_shape or streamed_completion_equals or streamed_chat_equals" \
  "$@"

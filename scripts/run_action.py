"""Run the steps of this repository's composite GitHub Action (action.yml) outside GitHub.

CI cannot start a GitHub runner, so it runs the Action's own ``run:`` steps with this script, as
GitHub would: ``bash --noprofile --norc -eo pipefail`` per step, the step's ``env:`` with its
``${{ inputs.* }}``, ``${{ steps.*.outputs.* }}``, ``${{ github.action_path }}`` and
``${{ runner.temp }}`` expressions filled in, ``$GITHUB_OUTPUT`` read back after each step and
``$GITHUB_STEP_SUMMARY`` kept in a file. Steps that ``uses:`` another action (artifact upload)
are listed and skipped: they need GitHub's services.

    python scripts/run_action.py --input suite=compat --input endpoint=http://127.0.0.1:8000 \\
        --summary summary.md

Exit status: the first failing step's, else 0. Prints each step's name and time.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def _resolve(expression: str, context: dict[str, Any]) -> str:
    """The value of one ``${{ ... }}`` expression: a dotted lookup in ``context``."""
    value: Any = context
    for part in expression.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"unsupported expression ${{{{ {expression} }}}}")
        value = value[part]
    return "" if value is None else str(value)


def substitute(text: str, context: dict[str, Any]) -> str:
    """``text`` with every ``${{ ... }}`` expression replaced by its value."""
    return EXPRESSION.sub(lambda match: _resolve(match.group(1), context), str(text))


def _read_outputs(path: Path) -> dict[str, str]:
    """The ``name=value`` lines a step wrote to ``$GITHUB_OUTPUT``."""
    outputs: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            outputs[name.strip()] = value
    return outputs


def run_action(action: Path, inputs: dict[str, str], summary: Path, temp: Path) -> int:
    """Run every ``run:`` step of ``action`` in order; the first failing step's exit status."""
    spec = yaml.safe_load(action.read_text())
    declared = spec.get("inputs", {})
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise SystemExit(
            f"run_action: unknown inputs {unknown}; the action takes {sorted(declared)}"
        )
    values = {name: inputs.get(name, str(d.get("default", ""))) for name, d in declared.items()}
    context: dict[str, Any] = {
        "inputs": values,
        "github": {"action_path": str(action.parent)},
        "runner": {"temp": str(temp)},
        "steps": {},
    }
    for index, step in enumerate(spec["runs"]["steps"], start=1):
        name = step.get("name", f"step {index}")
        if "uses" in step:
            print(f"==> action step {index} '{name}': skipped (uses {step['uses']}: GitHub only)")
            continue
        output = temp / f"output-{index}"
        output.touch()
        env = {**os.environ, "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)}
        env.update({key: substitute(v, context) for key, v in (step.get("env") or {}).items()})
        started = time.monotonic()
        print(f"==> action step {index} '{name}'", flush=True)
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            env=env,
            check=False,
        )
        print(
            f"==> action step {index} '{name}': exit {done.returncode} after "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
        if "id" in step:
            context["steps"][step["id"]] = {"outputs": _read_outputs(output)}
        if done.returncode != 0:
            return done.returncode
    return 0


def main() -> int:
    """Parse ``--input name=value`` pairs and run the Action."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--action", type=Path, default=ROOT / "action.yml")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--summary", type=Path, required=True, help="file for the job summary")
    parser.add_argument("--temp", type=Path, help="the runner's temp folder (default: a new one)")
    args = parser.parse_args()
    temp = args.temp or Path(tempfile.mkdtemp(prefix="gpuinfer-action-"))
    temp.mkdir(parents=True, exist_ok=True)
    inputs = dict(item.split("=", 1) for item in args.input)
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.touch()
    return run_action(args.action.resolve(), inputs, args.summary.resolve(), temp.resolve())


if __name__ == "__main__":
    sys.exit(main())
